//! Integration tests: Ferry as a process against real registries and clients.
