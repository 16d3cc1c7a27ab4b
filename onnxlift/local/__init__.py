"""The local stack: moto as the embedded AWS, Lambda runtimes and an API gateway on loopback."""
