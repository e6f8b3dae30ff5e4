//! The request and response of `POST /step/trigger`, as the original defines them.

use crate::go_json::write_go_string;

/// The decoded request body. Fields absent from the JSON keep their zero values,
/// as in the original's Go struct.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPayload {
    /// `lint`, `build` or `test`; anything else is answered with `Unknown step!`.
    pub step_name: String,
    /// Only echoed into the logs.
    pub repo_path: String,
    /// Only echoed into the logs.
    pub commit_hash: String,
    /// Forces the reported status of a build or test (passed through unchecked).
    pub simulate_status: Option<String>,
    /// Forces the simulated duration of a build or test, in milliseconds
    /// (zero or negative means no wait, as Go's `time.Sleep` does).
    pub simulate_build_time: Option<i64>,
}

/// The 200 answer of a step that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResponse {
    /// The step's log lines joined with `\n`.
    pub build_logs: String,
    /// `Success`, `Failure`, or whatever `simulate_status` said.
    pub status: String,
    /// Milliseconds from the decoded request to the response, lock wait included.
    pub duration_ms: u64,
}

impl StepResponse {
    /// The body exactly as the original writes it: compact JSON in field order
    /// `build_logs`, `status`, `duration_ms`, Go's escaping, and a trailing newline.
    pub fn to_go_json(&self) -> String {
        let mut out = String::with_capacity(self.build_logs.len() + 64);
        out.push_str("{\"build_logs\":");
        write_go_string(&mut out, &self.build_logs);
        out.push_str(",\"status\":");
        write_go_string(&mut out, &self.status);
        out.push_str(",\"duration_ms\":");
        out.push_str(&self.duration_ms.to_string());
        out.push_str("}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_body_matches_the_original_byte_for_byte() {
        let r = StepResponse {
            build_logs: "step 'lint' build started!\nRepo path: /r".to_owned(),
            status: "Success".to_owned(),
            duration_ms: 81,
        };
        assert_eq!(
            r.to_go_json(),
            "{\"build_logs\":\"step 'lint' build started!\\nRepo path: /r\",\"status\":\"Success\",\"duration_ms\":81}\n"
        );
    }
}
