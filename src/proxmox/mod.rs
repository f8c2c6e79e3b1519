//! The proxmox target: the VM variant of a recipe made into a bootable disk with its
//! cloud-init seed ([`target`]), and the Proxmox VE API that turns them into a template
//! ([`api`] speaks HTTP, [`deploy`] runs the flow); [`boot`] starts the disk here under QEMU.

pub mod api;
pub mod boot;
pub mod deploy;
pub mod preflight;
pub mod target;
