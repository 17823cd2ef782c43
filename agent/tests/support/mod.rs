#![allow(dead_code)]
pub mod agent;
pub mod otlp_receiver;
