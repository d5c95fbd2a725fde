//! A benchmark fixture: handles every event by doing nothing, so
//! `bench-handlers` can measure what one invocation costs the host.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "authkit:handler/events-handler",
});

use exports::authkit::handler::events::{Event, Guest};

struct Noop;

impl Guest for Noop {
    fn handle(_event: Event) -> Result<(), String> {
        Ok(())
    }
}

export!(Noop);
