//! The controller's logic over a recording fake BIRD: start, configure only on
//! change, roll the file back when BIRD rejects a config, restart with backoff.

use std::time::{Duration, Instant};

use calinet_bgp::{Applied, Bird, BirdRoute, ControlError, Controller, ProtocolStatus};

#[derive(Debug, Default)]
struct Fake {
    file: String,
    running: bool,
    log: Vec<String>,
    reject_next: bool,
}

impl Bird for Fake {
    fn write_config(&mut self, text: &str) -> Result<(), ControlError> {
        self.file = text.to_owned();
        self.log.push(format!("write {text}"));
        Ok(())
    }
    fn is_running(&mut self) -> bool {
        self.running
    }
    fn start(&mut self, recover: bool) -> Result<(), ControlError> {
        self.running = true;
        self.log.push(format!("start recover={recover}"));
        Ok(())
    }
    fn configure(&mut self) -> Result<(), ControlError> {
        self.log.push("configure".into());
        if std::mem::take(&mut self.reject_next) {
            return Err(ControlError::Rejected {
                command: "configure".into(),
                code: 8002,
                message: "bird.conf:3:1 syntax error".into(),
            });
        }
        Ok(())
    }
    fn protocols(&mut self) -> Result<Vec<ProtocolStatus>, ControlError> {
        Ok(Vec::new())
    }
    fn routes(&mut self) -> Result<Vec<BirdRoute>, ControlError> {
        Ok(Vec::new())
    }
    fn stop(&mut self) -> Result<(), ControlError> {
        self.running = false;
        self.log.push("stop".into());
        Ok(())
    }
}

#[test]
fn starts_then_configures_only_changes() {
    let t0 = Instant::now();
    let mut c = Controller::new(Fake::default());
    assert_eq!(c.apply("a", t0).unwrap(), Applied::Started);
    assert_eq!(c.apply("a", t0).unwrap(), Applied::Unchanged);
    assert_eq!(c.apply("b", t0).unwrap(), Applied::Reconfigured);
    assert_eq!(
        c.bird().log,
        ["write a", "start recover=false", "write b", "configure"]
    );
    assert_eq!(c.applied(), Some("b"));
}

#[test]
fn rejected_config_is_rolled_back_on_disk() {
    let t0 = Instant::now();
    let mut c = Controller::new(Fake::default());
    c.apply("good", t0).unwrap();
    c.bird_mut().reject_next = true;
    let err = c.apply("bad", t0).unwrap_err();
    assert!(
        matches!(err, ControlError::Rejected { code: 8002, .. }),
        "{err}"
    );
    assert_eq!(c.bird().file, "good");
    assert_eq!(c.applied(), Some("good"));
    // The next attempt tries again.
    assert_eq!(c.apply("bad", t0).unwrap(), Applied::Reconfigured);
}

#[test]
fn dead_bird_is_restarted_as_graceful_restart_with_backoff() {
    let t0 = Instant::now();
    let mut c = Controller::new(Fake::default()).with_backoff(Duration::from_secs(5));
    c.apply("a", t0).unwrap();
    c.bird_mut().running = false;
    let err = c.ensure_running(t0 + Duration::from_secs(2)).unwrap_err();
    match err {
        ControlError::Backoff { wait } => assert_eq!(wait, Duration::from_secs(3)),
        e => panic!("{e}"),
    }
    assert_eq!(
        c.ensure_running(t0 + Duration::from_secs(5)).unwrap(),
        Applied::Restarted
    );
    assert_eq!(c.bird().log.last().unwrap(), "start recover=true");
    assert_eq!(
        c.ensure_running(t0 + Duration::from_secs(6)).unwrap(),
        Applied::Unchanged
    );
}

#[test]
fn stop_forgets_state_and_a_later_apply_starts_fresh() {
    let t0 = Instant::now();
    let mut c = Controller::new(Fake::default());
    c.apply("a", t0).unwrap();
    c.stop().unwrap();
    assert_eq!(c.ensure_running(t0).unwrap(), Applied::Unchanged);
    assert_eq!(c.apply("a", t0).unwrap(), Applied::Started);
}

#[test]
fn an_adopted_bird_that_dies_is_restarted_in_recovery() {
    let t0 = Instant::now();
    // A BIRD left running by an earlier agent answers on its socket.
    let mut c = Controller::new(Fake {
        running: true,
        ..Fake::default()
    });
    assert_eq!(c.apply("a", t0).unwrap(), Applied::Reconfigured);
    c.bird_mut().running = false;
    assert_eq!(
        c.ensure_running(t0 + Duration::from_secs(1)).unwrap(),
        Applied::Restarted
    );
    assert_eq!(c.bird().log.last().unwrap(), "start recover=true");
}
