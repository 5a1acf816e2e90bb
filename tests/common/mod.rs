#![allow(dead_code)]
pub mod pinhole;
pub mod upstream;
