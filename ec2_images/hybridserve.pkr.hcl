# Packer (amazon-ebs): bake an AMI with the model server installed; the artifact is fetched at
# boot (hybridserve-fetch.service) so one image serves every model version.
# Build: packer init . && packer build -var-file=hybridserve.auto.pkrvars.hcl hybridserve.pkr.hcl
# The build installs from ./wheelhouse only (the project's wheel and every dependency, pinned by
# sha256 in wheelhouse/requirements.txt): pip never reaches a package index here either.
packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "region" { type = string }
variable "instance_type" { type = string }
variable "deployment" { type = string }
variable "python" { type = string }
variable "server_port" { type = number }
variable "fetch_unit" { type = string }
variable "server_unit" { type = string }

source "amazon-ebs" "hybridserve" {
  region        = var.region
  instance_type = var.instance_type
  ami_name      = "hybridserve-${var.deployment}-{{timestamp}}"
  ssh_username  = "ec2-user"
  source_ami_filter {
    filters = {
      name                = "al2023-ami-2023.*-kernel-*-x86_64"
      architecture        = "x86_64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["amazon"]
    most_recent = true
  }
  tags = {
    "hybridserve:deployment" = var.deployment
    "hybridserve:role"       = "model-server-image"
  }
}

build {
  sources = ["source.amazon-ebs.hybridserve"]

  provisioner "file" {
    source      = "rendered/${var.fetch_unit}"
    destination = "/tmp/${var.fetch_unit}"
  }
  provisioner "file" {
    source      = "rendered/${var.server_unit}"
    destination = "/tmp/${var.server_unit}"
  }
  provisioner "file" {
    source      = "rendered/fetch.py"
    destination = "/tmp/fetch.py"
  }
  provisioner "file" {
    source      = "wheelhouse"
    destination = "/tmp"
  }
  provisioner "shell" {
    inline = [
      "sudo dnf -y install ${var.python}",
      "sudo useradd --system --shell /sbin/nologin hybridserve || true",
      "sudo ${var.python} -m venv /opt/hybridserve/venv",
      "sudo /opt/hybridserve/venv/bin/pip install --quiet --disable-pip-version-check --no-index --require-hashes --only-binary=:all: --find-links /tmp/wheelhouse -r /tmp/wheelhouse/requirements.txt",
      "sudo install -m 0755 /tmp/fetch.py /opt/hybridserve/fetch.py",
      "sudo mv /tmp/${var.fetch_unit} /tmp/${var.server_unit} /etc/systemd/system/",
      "sudo mkdir -p /opt/hybridserve/artifact /opt/hybridserve/cache",
      "sudo chown -R hybridserve:hybridserve /opt/hybridserve/artifact /opt/hybridserve/cache",
      "sudo systemctl daemon-reload",
      "sudo systemctl enable ${var.fetch_unit} ${var.server_unit}",
      "echo 'server port ${var.server_port}' | sudo tee /opt/hybridserve/PORT",
    ]
  }
}
