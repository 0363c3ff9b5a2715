//! Faults injected into the running binary under load, each test printing what was injected and
//! what was observed: Postgres stopped for ten seconds (spec §1.6 `unavailable`, §5.8), and
//! SIGTERM while plain requests and chat streams are in flight (spec §10.5).

mod load;
mod outage;
mod postgres;
mod sigterm;
