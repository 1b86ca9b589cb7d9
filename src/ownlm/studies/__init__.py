"""Recipes that train and evaluate: the studies of the papers (active levels), the demo.
They call the stages (`ownlm.train`) and the scoring (`ownlm.evaluate`); nothing calls them
but the CLI."""
