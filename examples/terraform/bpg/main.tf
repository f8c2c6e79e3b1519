# A Coder template for workspaces cloned from the template `imgbuild deploy` made of
# recipes/coderall-bookworm.toml, with the bpg/proxmox provider.
#
# Before `coder templates push`: copy imgbuild's per-workspace user-data next to this file,
#   cp out/coderall-bookworm/proxmox/user-data user-data.tftpl
# (its `${agent_token}` and `${init_script}` are filled below by templatefile()).
# The provider uploads the snippet over SSH (the Proxmox API cannot upload snippets): its
# `ssh` block needs a user that may write the storage's snippets/ directory.

terraform {
  required_providers {
    coder = {
      source  = "coder/coder"
      version = "2.17.0"
    }
    proxmox = {
      source  = "bpg/proxmox"
      version = "0.111.1"
    }
  }
}

variable "proxmox_endpoint" {
  type        = string
  description = "The node's API, e.g. https://pve.lan:8006/"
}

variable "proxmox_api_token" {
  type        = string
  sensitive   = true
  description = "USER@REALM!TOKENID=SECRET"
}

variable "node" {
  type    = string
  default = "pve"
}

provider "proxmox" {
  endpoint  = var.proxmox_endpoint
  api_token = var.proxmox_api_token
  insecure  = false
  ssh {
    agent    = true
    username = "root"
  }
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
  vm_name = trim(replace(lower("coder-${data.coder_workspace_owner.me.name}-${data.coder_workspace.me.name}"), "/[^a-z0-9-]/", "-"), "-")
}

# The template imgbuild made: the newest one carries the recipe's name (older ones are
# renamed NAME-VMID), and every template it made is tagged imgbuild-NAME.
data "proxmox_virtual_environment_vms" "template" {
  node_name = var.node
  tags      = ["imgbuild-coderall-bookworm"]
  filter {
    name   = "name"
    values = ["coderall-bookworm"]
  }
}

# The per-workspace user-data: imgbuild's snippet with this workspace's agent token.
resource "proxmox_virtual_environment_file" "user_data" {
  content_type = "snippets"
  datastore_id = "local"
  node_name    = var.node
  source_raw {
    file_name = "coderall-${data.coder_workspace.me.id}.yaml"
    data = templatefile("${path.module}/user-data.tftpl", {
      agent_token = coder_agent.main.token
      init_script = coder_agent.main.init_script
    })
  }
}

resource "proxmox_virtual_environment_vm" "workspace" {
  count     = data.coder_workspace.me.start_count
  name      = local.vm_name
  node_name = var.node
  tags      = ["coder"]

  clone {
    vm_id = data.proxmox_virtual_environment_vms.template.vms[0].vm_id
    full  = false
  }

  agent {
    enabled = true
  }

  cpu {
    cores = 4
  }

  memory {
    dedicated = 8192
  }

  network_device {
    bridge = "vmbr0"
  }

  # Proxmox's cloud-init drive (ide2, as on the template) carries network and the snippet.
  initialization {
    datastore_id      = "local-lvm"
    interface         = "ide2"
    user_data_file_id = proxmox_virtual_environment_file.user_data.id
    ip_config {
      ipv4 {
        address = "dhcp"
      }
    }
  }
}
