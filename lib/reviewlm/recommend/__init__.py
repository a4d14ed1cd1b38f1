"""`reviewlm recommend`: needs in plain words to ranked products."""
