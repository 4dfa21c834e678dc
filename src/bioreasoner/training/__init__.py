"""Training family: the shared training run lifecycle, trainer rows, rounds, pairs, sleep."""
