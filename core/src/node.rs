//! The async driver over a [`Site`](crate::site::Site): see the module body.
