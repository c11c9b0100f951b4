//! Pure desired-state builders: what each child object should look like. No client, no I/O;
//! the controller applies what these return.

pub mod demo;
pub mod keystore;
pub mod secret;
pub mod trust;

pub use secret::{
    SecretContent, belongs_to, controlled_by, desired_secret, secret_data, secret_needs_update,
};
