"""The reference ML pipeline: train, evaluate and deploy a digits classifier, then score."""
