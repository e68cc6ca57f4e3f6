//! Which front door answers a request: the decisions, without the network.
//!
//! A request goes to the endpoints in the order given, first to last, and
//! the first *answer* is taken. An endpoint is skipped, and the next one
//! tried, when:
//!
//! - nothing was sent: the connection was refused, the host could not be
//!   reached or resolved, or it did not accept within the connect timeout.
//!   Any request may move on, a POST without a key too: no byte of it left.
//! - it answered 502, 503 or 504: that front door has no worker to give it
//!   to (or one died under it), and another may. A POST moves on only with
//!   an `Idempotency-Key`: a 502 may come from a worker that stored the
//!   image and died before answering.
//! - the request was sent but no whole answer came (a reset, a connection
//!   closed early, the request timeout): again, a POST only with a key.
//!   The API answers a repeated key with the image stored first, on any
//!   worker of any front door sharing the database, so the retry stores
//!   nothing twice.
//!
//! Every other answer is final, success or not: a 4xx is the request's own
//! fault and would be refused anywhere; a 500 is the API's, said once.
//! Nothing is remembered between runs; the endpoints are only tried within
//! one request, once each.

use std::time::Duration;

use super::endpoint::Endpoint;

/// An HTTP answer: the status and the whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub reason: &'static str,
    pub body: Vec<u8>,
}

/// What one attempt at one endpoint came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Answered(Answer),
    /// Nothing was sent.
    NotConnected(NotConnected),
    /// The request (or part of it) was sent, and no whole answer came.
    NoAnswer(NoAnswer),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotConnected {
    Refused,
    ConnectTimeout(Duration),
    /// Unreachable, unresolvable, …: the system's words.
    Unreachable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    Timeout(Duration),
    /// Reset, closed before the answer, answer cut off: hyper's words.
    Broken(String),
}

/// What to do with an attempt's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A final answer: take it, whatever its status.
    Take,
    /// Try the next endpoint; the words say why (after the endpoint's name).
    Skip(String),
    /// Stop here without an answer: a POST without a key that may have
    /// been stored cannot be sent again.
    Stop(String),
}

/// The statuses that mean "this front door cannot serve it now".
pub const FAILOVER_STATUSES: [u16; 3] = [502, 503, 504];

/// Judges one outcome. `resendable`: the request may be sent twice
/// without harm (a GET, or a POST with an `Idempotency-Key`).
pub fn judge(outcome: &Outcome, resendable: bool) -> Verdict {
    let why = describe(outcome);
    match outcome {
        Outcome::Answered(answer) if !FAILOVER_STATUSES.contains(&answer.status) => Verdict::Take,
        // A POST without a key gets its 502/503/504 as a final answer.
        Outcome::Answered(_) if !resendable => Verdict::Take,
        Outcome::Answered(_) | Outcome::NotConnected(_) => Verdict::Skip(why),
        Outcome::NoAnswer(_) if resendable => Verdict::Skip(why),
        Outcome::NoAnswer(_) => Verdict::Stop(why),
    }
}

/// An outcome in words, to follow the endpoint's name.
pub fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Answered(answer) => format!("answered {} {}", answer.status, answer.reason)
            .trim_end()
            .to_string(),
        Outcome::NotConnected(NotConnected::Refused) => "refused the connection".to_string(),
        Outcome::NotConnected(NotConnected::ConnectTimeout(limit)) => {
            format!("did not accept a connection within {limit:?}")
        }
        Outcome::NotConnected(NotConnected::Unreachable(why)) => {
            format!("could not be reached ({why})")
        }
        Outcome::NoAnswer(NoAnswer::Timeout(limit)) => {
            format!("did not answer within {limit:?}")
        }
        Outcome::NoAnswer(NoAnswer::Broken(why)) => format!("gave no answer ({why})"),
    }
}

/// An endpoint that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub endpoint: usize,
    pub why: String,
}

/// A request that got no final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unanswered {
    /// Every endpoint was skipped.
    Exhausted(Vec<Skipped>),
    /// Endpoint `endpoint` left a POST without a key in doubt.
    Stopped {
        endpoint: usize,
        why: String,
        skipped: Vec<Skipped>,
    },
}

/// A final answer: the index of the endpoint that gave it, the answer, and
/// every endpoint skipped before it.
pub type Taken = (usize, Answer, Vec<Skipped>);

/// The first final answer, sending to each endpoint in turn with `send`.
pub fn first_answer(
    endpoints: &[Endpoint],
    resendable: bool,
    mut send: impl FnMut(&Endpoint) -> Outcome,
) -> Result<Taken, Unanswered> {
    let mut skipped = Vec::new();
    for (index, endpoint) in endpoints.iter().enumerate() {
        let outcome = send(endpoint);
        match judge(&outcome, resendable) {
            Verdict::Take => {
                let Outcome::Answered(answer) = outcome else {
                    unreachable!("only an answer is taken")
                };
                return Ok((index, answer, skipped));
            }
            Verdict::Skip(why) => skipped.push(Skipped {
                endpoint: index,
                why,
            }),
            Verdict::Stop(why) => {
                return Err(Unanswered::Stopped {
                    endpoint: index,
                    why,
                    skipped,
                });
            }
        }
    }
    Err(Unanswered::Exhausted(skipped))
}

/// The stderr lines reporting each switch, one per skipped endpoint:
/// `gallery-client: URL refused the connection; trying NEXT`.
pub fn notices(endpoints: &[Endpoint], skipped: &[Skipped]) -> Vec<String> {
    skipped
        .iter()
        .filter_map(|skip| {
            let next = endpoints.get(skip.endpoint + 1)?;
            Some(format!(
                "gallery-client: {} {}; trying {next}",
                endpoints[skip.endpoint], skip.why
            ))
        })
        .collect()
}

/// A request without an answer, in one line.
pub fn explain(endpoints: &[Endpoint], unanswered: &Unanswered) -> String {
    let list = |skipped: &[Skipped]| {
        skipped
            .iter()
            .map(|skip| format!("{} {}", endpoints[skip.endpoint], skip.why))
            .collect::<Vec<_>>()
            .join("; ")
    };
    match unanswered {
        Unanswered::Exhausted(skipped) if skipped.len() == 1 => {
            format!("the front door {}", list(skipped))
        }
        Unanswered::Exhausted(skipped) => {
            format!("no front door answered: {}", list(skipped))
        }
        Unanswered::Stopped {
            endpoint,
            why,
            skipped,
        } => {
            let before = if skipped.is_empty() {
                String::new()
            } else {
                format!(" (after: {})", list(skipped))
            };
            format!(
                "{} {why}; the POST may or may not have been stored, and without an \
                 Idempotency-Key it is not sent again{before}",
                endpoints[*endpoint]
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16) -> Outcome {
        Outcome::Answered(Answer {
            status,
            reason: "",
            body: format!("{status}").into_bytes(),
        })
    }

    fn refused() -> Outcome {
        Outcome::NotConnected(NotConnected::Refused)
    }

    fn reset() -> Outcome {
        Outcome::NoAnswer(NoAnswer::Broken("connection reset".into()))
    }

    fn is_skip(verdict: &Verdict) -> bool {
        matches!(verdict, Verdict::Skip(_))
    }

    #[test]
    fn each_outcome_is_judged_by_whether_the_request_may_be_sent_again() {
        let slow_connect =
            Outcome::NotConnected(NotConnected::ConnectTimeout(Duration::from_secs(1)));
        let unreachable = Outcome::NotConnected(NotConnected::Unreachable("no route".into()));
        let slow_answer = Outcome::NoAnswer(NoAnswer::Timeout(Duration::from_secs(10)));
        // (outcome, verdict for a GET or keyed POST, for an unkeyed POST)
        let table: Vec<(Outcome, &str, &str)> = vec![
            (answer(200), "take", "take"),
            (answer(400), "take", "take"),
            (answer(404), "take", "take"),
            (answer(413), "take", "take"),
            (answer(422), "take", "take"),
            (answer(500), "take", "take"),
            (answer(501), "take", "take"),
            (answer(502), "skip", "take"),
            (answer(503), "skip", "take"),
            (answer(504), "skip", "take"),
            (refused(), "skip", "skip"),
            (slow_connect, "skip", "skip"),
            (unreachable, "skip", "skip"),
            (reset(), "skip", "stop"),
            (slow_answer, "skip", "stop"),
        ];
        let name = |verdict: Verdict| match verdict {
            Verdict::Take => "take",
            Verdict::Skip(_) => "skip",
            Verdict::Stop(_) => "stop",
        };
        for (outcome, resendable, unkeyed) in table {
            assert_eq!(name(judge(&outcome, true)), resendable, "{outcome:?}");
            assert_eq!(name(judge(&outcome, false)), unkeyed, "{outcome:?} unkeyed");
        }
    }

    #[test]
    fn outcomes_are_put_in_words_after_the_endpoint() {
        let bad_gateway = Outcome::Answered(Answer {
            status: 502,
            reason: "Bad Gateway",
            body: Vec::new(),
        });
        assert_eq!(describe(&bad_gateway), "answered 502 Bad Gateway");
        assert_eq!(describe(&answer(599)), "answered 599");
        assert_eq!(describe(&refused()), "refused the connection");
        assert_eq!(
            describe(&Outcome::NotConnected(NotConnected::ConnectTimeout(
                Duration::from_secs(1)
            ))),
            "did not accept a connection within 1s"
        );
        assert_eq!(
            describe(&Outcome::NoAnswer(NoAnswer::Timeout(
                Duration::from_millis(1500)
            ))),
            "did not answer within 1.5s"
        );
        assert_eq!(describe(&reset()), "gave no answer (connection reset)");
        assert!(is_skip(&judge(&refused(), false)));
    }

    fn endpoints(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint::parse(&format!("http://127.0.0.1:{}", 8080 + i)).unwrap())
            .collect()
    }

    /// Runs [`first_answer`] over scripted outcomes; also returns which
    /// endpoints were tried.
    fn run(script: Vec<Outcome>, resendable: bool) -> (Result<Taken, Unanswered>, Vec<String>) {
        let all = endpoints(script.len());
        let mut tried = Vec::new();
        let mut script = script.into_iter();
        let result = first_answer(&all, resendable, |endpoint| {
            tried.push(endpoint.to_string());
            script.next().unwrap()
        });
        (result, tried)
    }

    #[test]
    fn endpoints_are_tried_in_order_until_one_answers_and_no_further() {
        let (result, tried) = run(vec![refused(), answer(503), answer(200), answer(200)], true);
        let (index, taken, skipped) = result.unwrap();
        assert_eq!((index, taken.status), (2, 200));
        assert_eq!(
            tried,
            [
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8081",
                "http://127.0.0.1:8082"
            ]
        );
        assert_eq!(
            notices(&endpoints(4), &skipped),
            [
                "gallery-client: http://127.0.0.1:8080 refused the connection; trying http://127.0.0.1:8081",
                "gallery-client: http://127.0.0.1:8081 answered 503; trying http://127.0.0.1:8082",
            ]
        );

        // The first endpoint answering: nothing skipped, nothing said.
        let (result, tried) = run(vec![answer(200), refused()], true);
        assert_eq!(result.unwrap().2, Vec::new());
        assert_eq!(tried.len(), 1);

        // A 4xx is final: the next endpoint would refuse it too.
        let (result, tried) = run(vec![answer(400), answer(200)], true);
        assert_eq!(result.unwrap().1.status, 400);
        assert_eq!(tried.len(), 1);
    }

    #[test]
    fn a_post_without_a_key_is_never_sent_twice() {
        // Refused: nothing was sent, so the next endpoint gets it.
        let (result, _) = run(vec![refused(), answer(200)], false);
        assert_eq!(result.unwrap().0, 1);
        // Sent, then no answer: stop, and say the POST is in doubt.
        let (result, tried) = run(vec![refused(), reset(), answer(200)], false);
        assert_eq!(tried.len(), 2);
        let unanswered = result.unwrap_err();
        let line = explain(&endpoints(3), &unanswered);
        assert_eq!(
            line,
            "http://127.0.0.1:8081 gave no answer (connection reset); the POST may or may not \
             have been stored, and without an Idempotency-Key it is not sent again \
             (after: http://127.0.0.1:8080 refused the connection)"
        );
        // A 502 is its answer.
        let (result, tried) = run(vec![answer(502), answer(200)], false);
        assert_eq!(result.unwrap().1.status, 502);
        assert_eq!(tried.len(), 1);
        // With a key, both move on.
        let (result, _) = run(vec![reset(), answer(502), answer(200)], true);
        assert_eq!(result.unwrap().0, 2);
    }

    #[test]
    fn every_endpoint_failing_is_one_line_naming_each() {
        let (result, tried) = run(vec![refused(), answer(502)], true);
        assert_eq!(tried.len(), 2);
        let unanswered = result.unwrap_err();
        assert_eq!(
            explain(&endpoints(2), &unanswered),
            "no front door answered: http://127.0.0.1:8080 refused the connection; \
             http://127.0.0.1:8081 answered 502"
        );
        let (result, _) = run(vec![refused()], true);
        assert_eq!(
            explain(&endpoints(1), &result.unwrap_err()),
            "the front door http://127.0.0.1:8080 refused the connection"
        );
    }
}
