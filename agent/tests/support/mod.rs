#![allow(dead_code)]
pub mod agent;
pub mod db;
pub mod go;
pub mod netns;
pub mod otlp_receiver;
pub mod podman;
pub mod rabbitmq;
