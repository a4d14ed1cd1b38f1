"""Ray Train jobs: masked-LM domain adaptation and a 1-5 star classifier."""
