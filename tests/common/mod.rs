#![allow(dead_code)]
pub mod certs;
pub mod netns;
pub mod pinhole;
pub mod upstream;
