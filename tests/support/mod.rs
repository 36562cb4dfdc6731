//! Test support: a network-like store.
#![allow(dead_code)]

pub mod netstore;
