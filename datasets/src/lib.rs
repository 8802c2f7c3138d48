//! Data for the fraud engine: a transaction simulator reproducing the Fraud Detection
//! Handbook's statistics with six fraud scenarios ([`sim`]), and loaders that map public fraud
//! data sets (ULB credit-card, PaySim, Sparkov) into the project's formats ([`loaders`]).

pub mod loaders;
pub mod sim;

pub use sim::{Scenarios, SimConfig, SimError, Simulator, Summary, HEADER, SCENARIO_NAMES};
