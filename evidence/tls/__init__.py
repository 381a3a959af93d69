"""TLS assessment of the released executable, measured from outside: sslyze plus direct handshakes."""
