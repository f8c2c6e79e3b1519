//! Debian and Ubuntu packages without a daemon: repositories and their signed indexes
//! ([`repo`]), control data ([`control`]), relationships and versions ([`relation`]), the
//! candidate set ([`universe`]), apt-style resolution ([`resolve`]), .deb files streamed into
//! layers ([`deb`]) and dpkg's database ([`dpkg`]).

pub mod control;
pub mod deb;
pub mod dpkg;
pub mod relation;
pub mod repo;
pub mod resolve;
pub mod universe;
