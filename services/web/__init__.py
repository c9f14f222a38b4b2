"""The pages for people (issue 20): a backend-for-frontend that signs people in with OpenID Connect and
reads through planning's, consent's and notify's HTTP APIs with the signed-in person's own token."""
