//! End-to-end tests of the client state machine against a scripted server.
