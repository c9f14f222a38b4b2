from services.planning.app import main

main()
