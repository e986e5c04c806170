"""How a VM becomes a model server: Packer template, cloud-init, systemd unit (predictors issue)."""
