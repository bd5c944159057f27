//! What talks to the kernel and the service manager, for both faces:
//! [`cgroups`] (cgroup paths by id),
//! [`identity`] (credentials and `/proc` facts → verified identity),
//! [`sender`] (per-message sender proof), [`exits`] (peers' processes
//! watched for their exit), [`socket_file`] (listening sockets and their
//! files), [`systemd`] (socket activation, readiness).

pub mod cgroups;
pub mod exits;
pub mod identity;
pub mod launch;
pub mod sender;
pub mod socket_file;
pub mod systemd;
