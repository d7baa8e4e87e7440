"""The fleet: regions, accelerator classes, hosts, the model catalog and deployments."""
