//! The proxmox target: the VM variant of a recipe made into a bootable disk with its
//! cloud-init seed ([`target`]), and the Proxmox VE API that turns them into a template
//! ([`api`] speaks HTTP, [`deploy`] runs the flow).

pub mod api;
pub mod deploy;
pub mod preflight;
pub mod target;
