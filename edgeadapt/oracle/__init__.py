"""The adaptive-oracle bounds: the paper's equations (`equations`), a bundle's bound on
measured costs (`bound`), and the best subsets of states (`subset`)."""
