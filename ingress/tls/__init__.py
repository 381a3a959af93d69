"""TLS termination: contexts, the SNI certificate store and dev PKI."""
