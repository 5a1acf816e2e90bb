#![allow(dead_code)]
pub mod netns;
pub mod pinhole;
pub mod upstream;
