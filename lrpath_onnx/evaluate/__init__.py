"""How faithful an explanation is: region perturbation, baselines, the randomisation check."""
