//! The fleet of simulated LwM2M clients. Not built yet: see the open issue for the simulator.
#![warn(missing_docs)]
