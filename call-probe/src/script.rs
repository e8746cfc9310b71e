//! Scripted call controls (`--script`): a timed list of actions — mute, unmute, camera-off,
//! camera-on, switch-camera, add-video — carried out on a call once it is connected, so that
//! a test (or a person) can see each one from the other side's report. Parsing is pure; the
//! runner waits until each action's time (the script is the workload: its waits are the
//! point, not a synchronisation) and applies it through the engine's API.

use std::str::FromStr;
use std::time::Duration;

use crate::call::{CallEngine, Control};

/// One action of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptAction {
    /// A media control on the running call.
    Control(Control),
    /// Add video to an audio call: a new offer on the same call (renegotiation).
    AddVideo,
}

impl ScriptAction {
    /// The name used in scripts.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Control(Control::Mute) => "mute",
            Self::Control(Control::Unmute) => "unmute",
            Self::Control(Control::CameraOff) => "camera-off",
            Self::Control(Control::CameraOn) => "camera-on",
            Self::Control(Control::SwitchCamera) => "switch-camera",
            Self::AddVideo => "add-video",
        }
    }

    const ALL: [ScriptAction; 6] = [
        Self::Control(Control::Mute),
        Self::Control(Control::Unmute),
        Self::Control(Control::CameraOff),
        Self::Control(Control::CameraOn),
        Self::Control(Control::SwitchCamera),
        Self::AddVideo,
    ];
}

/// A timed list of actions, in time order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script {
    pub steps: Vec<(Duration, ScriptAction)>,
}

/// Why a script was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    #[error("script step {step:?}: expected TIME:ACTION, e.g. 2s:mute")]
    Shape { step: String },
    #[error("script step {step:?}: the time must be like 2s, 1.5s or 500ms (at most 1 hour)")]
    Time { step: String },
    #[error(
        "script step {step:?}: unknown action (mute, unmute, camera-off, camera-on, \
         switch-camera, add-video)"
    )]
    Action { step: String },
}

fn parse_time(text: &str) -> Option<Duration> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else {
        (text.strip_suffix('s')?, 1.0)
    };
    let value: f64 = number.parse().ok()?;
    let seconds = value * scale;
    (seconds.is_finite() && (0.0..=3600.0).contains(&seconds))
        .then(|| Duration::from_secs_f64(seconds))
}

impl FromStr for Script {
    type Err = ScriptError;

    /// `2s:mute,4s:unmute,6s:camera-off,8s:camera-on,10s:switch-camera` (times from the
    /// moment the call connected; steps are sorted by time, ties keep their order).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut steps = Vec::new();
        for step in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((time, action)) = step.split_once(':') else {
                return Err(ScriptError::Shape { step: step.into() });
            };
            let time =
                parse_time(time.trim()).ok_or_else(|| ScriptError::Time { step: step.into() })?;
            let action = ScriptAction::ALL
                .into_iter()
                .find(|a| a.name() == action.trim())
                .ok_or_else(|| ScriptError::Action { step: step.into() })?;
            steps.push((time, action));
        }
        steps.sort_by_key(|(time, _)| *time);
        Ok(Self { steps })
    }
}

impl Script {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Carries the script out on `engine`'s call, times counted from now (call it when the
    /// call connected). Each action's outcome is logged; a refused one does not stop the rest.
    pub async fn run(self, engine: CallEngine) {
        let start = tokio::time::Instant::now();
        for (at, action) in self.steps {
            tokio::time::sleep_until(start + at).await;
            let outcome = match action {
                ScriptAction::Control(control) => engine.control(control).await.map(|_| ()),
                ScriptAction::AddVideo => engine.add_video().await,
            };
            match outcome {
                Ok(()) => tracing::info!(action = action.name(), "script"),
                Err(error) => tracing::warn!(action = action.name(), %error, "script step refused"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sorts_and_refuses() {
        let script: Script = "4s:unmute, 2s:mute,500ms:camera-off,1.5s:switch-camera,3s:add-video"
            .parse()
            .unwrap();
        let steps: Vec<(u128, &str)> = script
            .steps
            .iter()
            .map(|(t, a)| (t.as_millis(), a.name()))
            .collect();
        assert_eq!(
            steps,
            vec![
                (500, "camera-off"),
                (1_500, "switch-camera"),
                (2_000, "mute"),
                (3_000, "add-video"),
                (4_000, "unmute")
            ]
        );
        assert!("".parse::<Script>().unwrap().is_empty());
        assert!(matches!(
            "mute".parse::<Script>(),
            Err(ScriptError::Shape { .. })
        ));
        for bad in ["2:mute", "-1s:mute", "xs:mute", "4000s:mute", "NaNs:mute"] {
            assert!(
                matches!(bad.parse::<Script>(), Err(ScriptError::Time { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            "2s:hold".parse::<Script>(),
            Err(ScriptError::Action { .. })
        ));
    }
}
