from services.consent.app import main

main()
