# A Coder template for workspaces cloned from the template `imgbuild deploy` made of
# recipes/coderall-bookworm.toml, with the Telmate/proxmox provider 3.x.
#
# Before `coder templates push`: copy imgbuild's per-workspace user-data next to this file,
#   cp out/coderall-bookworm/proxmox/user-data user-data.tftpl
# The provider has no snippet upload and neither has the Proxmox API: the snippet is copied
# to the node's snippets/ directory over SSH by terraform_data's file provisioner.

terraform {
  required_providers {
    coder = {
      source  = "coder/coder"
      version = "2.17.0"
    }
    proxmox = {
      source  = "telmate/proxmox"
      version = "3.0.2-rc09"
    }
  }
}

variable "pm_api_url" {
  type        = string
  description = "e.g. https://pve.lan:8006/api2/json"
}

variable "pm_api_token_id" {
  type        = string
  description = "USER@REALM!TOKENID"
}

variable "pm_api_token_secret" {
  type      = string
  sensitive = true
}

variable "node" {
  type    = string
  default = "pve"
}

variable "node_ssh_host" {
  type        = string
  description = "The node's address for the snippet copy"
}

provider "proxmox" {
  pm_api_url          = var.pm_api_url
  pm_api_token_id     = var.pm_api_token_id
  pm_api_token_secret = var.pm_api_token_secret
  pm_tls_insecure     = false
}

data "coder_workspace" "me" {}

data "coder_workspace_owner" "me" {}

resource "coder_agent" "main" {
  arch = "amd64"
  os   = "linux"
  dir  = "/home/coder"
}

locals {
  # Proxmox VM names are DNS names: no `_`, no leading or trailing `-`.
  vm_name  = trim(replace(lower("coder-${data.coder_workspace_owner.me.name}-${data.coder_workspace.me.name}"), "/[^a-z0-9-]/", "-"), "-")
  snippet  = "coderall-${data.coder_workspace.me.id}.yaml"
}

# The per-workspace user-data, copied onto the node (not the machine running Terraform).
resource "terraform_data" "user_data" {
  triggers_replace = [coder_agent.main.token]

  connection {
    type  = "ssh"
    host  = var.node_ssh_host
    user  = "root"
    agent = true
  }

  provisioner "file" {
    destination = "/var/lib/vz/snippets/${local.snippet}"
    content = templatefile("${path.module}/user-data.tftpl", {
      agent_token = coder_agent.main.token
      init_script = coder_agent.main.init_script
    })
  }
}

resource "proxmox_vm_qemu" "workspace" {
  count       = data.coder_workspace.me.start_count
  name        = local.vm_name
  target_node = var.node
  clone       = "coderall-bookworm" # the newest template imgbuild made carries the recipe's name
  full_clone  = false
  agent       = 1
  os_type     = "cloud-init"
  bios        = "ovmf"
  scsihw      = "virtio-scsi-single"
  memory      = 8192
  vm_state    = "running"
  tags        = "coder"

  cpu {
    cores = 4
  }

  # Declared, or Telmate 3.x drops the template's cloud-init drive on clone and cicustom
  # reaches nothing.
  disks {
    ide {
      ide2 {
        cloudinit {
          storage = "local-lvm"
        }
      }
    }
    scsi {
      scsi0 {
        disk {
          size    = "16G"
          storage = "local-lvm"
        }
      }
    }
  }

  efidisk {
    efitype = "4m"
    storage = "local-lvm"
  }

  network {
    id     = 0
    model  = "virtio"
    bridge = "vmbr0"
  }

  serial {
    id   = 0
    type = "socket"
  }

  ipconfig0 = "ip=dhcp"
  cicustom  = "user=local:snippets/${local.snippet}"

  depends_on = [terraform_data.user_data]
}
