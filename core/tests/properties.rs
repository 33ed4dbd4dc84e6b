//! Properties of every retry schedule, the budget and the breaker, on simulated time.

use std::time::Duration;

use dbguard_core::retry::backoff::delay_for;
use dbguard_core::{
    BreakerConfig, BreakerState, CircuitBreaker, Decision, ErrorClass, Idempotency, Instant, Jitter, RetryBudget,
    RetryPolicy, RetryState, SeededRng,
};
use proptest::prelude::*;

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Equal), Just(Jitter::Decorrelated)]
}

fn policy() -> impl Strategy<Value = RetryPolicy> {
    (0u32..=100, 1u64..=10_000, 0u64..=100_000, 1.0f64..=10.0, jitter()).prop_map(
        |(retries, base_ms, extra_ms, multiplier, jitter)| {
            RetryPolicy::builder()
                .max_retries(retries)
                .base_delay(Duration::from_millis(base_ms))
                .max_delay(Duration::from_millis(base_ms + extra_ms))
                .multiplier(multiplier)
                .jitter(jitter)
                .build()
                .expect("strategy only builds valid policies")
        },
    )
}

fn class() -> impl Strategy<Value = ErrorClass> {
    proptest::sample::select(ErrorClass::ALL.to_vec())
}

/// Classes that count as a failure to connect (they trip the breaker).
fn tripping_class() -> impl Strategy<Value = ErrorClass> {
    proptest::sample::select(ErrorClass::ALL.iter().copied().filter(|c| c.trips_breaker()).collect::<Vec<_>>())
}

proptest! {
    #[test]
    fn every_delay_is_within_zero_and_cap(policy in policy(), n in 0u32..200, prev_ms in 0u64..1_000_000, seed: u64) {
        let mut rng = SeededRng::new(seed);
        let delay = delay_for(&policy, n, Duration::from_millis(prev_ms), &mut rng);
        prop_assert!(delay <= policy.max_delay());
    }

    #[test]
    fn jitter_stays_within_its_distribution(policy in policy(), n in 0u32..30, seed: u64) {
        let mut rng = SeededRng::new(seed);
        let nominal = dbguard_core::retry::backoff::nominal_delay(&policy, n);
        let delay = delay_for(&policy, n, Duration::ZERO, &mut rng);
        match policy.jitter() {
            Jitter::None => prop_assert_eq!(delay, nominal),
            Jitter::Full => prop_assert!(delay <= nominal),
            Jitter::Equal => prop_assert!(delay >= nominal / 2 - Duration::from_nanos(1) && delay <= nominal),
            Jitter::Decorrelated => {
                prop_assert!(delay >= policy.base_delay().min(policy.max_delay()));
                prop_assert!(delay <= (policy.base_delay() * 3).min(policy.max_delay()));
            }
        }
    }

    #[test]
    fn never_more_retries_than_the_policy_allows(policy in policy(), class in class(), seed: u64, non_idem: bool) {
        let idempotency = if non_idem { Idempotency::NonIdempotent } else { Idempotency::Idempotent };
        let mut state = RetryState::with_rng(policy, idempotency, SeededRng::new(seed));
        let mut now = Instant::ZERO;
        let mut retries = 0u32;
        while let Decision::RetryAt(at) = state.on_failure(now, class) {
            prop_assert!(at >= now);
            prop_assert!(at.saturating_duration_since(now) <= policy.max_delay());
            now = at;
            retries += 1;
            prop_assert!(retries <= policy.max_retries());
        }
        if !class.is_retryable() || (non_idem && !class.is_safe_for_non_idempotent()) {
            prop_assert_eq!(retries, 0);
        } else {
            prop_assert_eq!(retries, policy.max_retries());
        }
    }

    #[test]
    fn schedules_are_deterministic_for_a_seed(policy in policy(), seed: u64) {
        let run = || {
            let mut state = RetryState::with_rng(policy, Idempotency::Idempotent, SeededRng::new(seed));
            let mut now = Instant::ZERO;
            let mut seen = Vec::new();
            while let Decision::RetryAt(at) = state.on_failure(now, ErrorClass::ConnectionLost) {
                seen.push(at);
                now = at;
            }
            seen
        };
        prop_assert_eq!(run(), run());
    }

    #[test]
    fn budget_never_goes_negative_or_over_capacity(
        capacity in 0u32..100,
        refill in 0u32..50,
        steps in proptest::collection::vec((0u64..2_000_000_000, any::<bool>()), 0..200),
    ) {
        let mut budget = RetryBudget::new(capacity, refill, Instant::ZERO);
        let mut now = Instant::ZERO;
        let mut granted_without_refill = 0u32;
        for (advance, withdraw) in steps {
            now = now + Duration::from_nanos(advance);
            if withdraw && budget.try_withdraw(now) {
                granted_without_refill += 1;
            }
            prop_assert!(budget.available(now) <= capacity);
        }
        if refill == 0 {
            prop_assert!(granted_without_refill <= capacity);
        }
    }

    #[test]
    fn breaker_only_opens_on_failures_to_connect(classes in proptest::collection::vec(class(), 0..200)) {
        let config = BreakerConfig::default();
        let mut breaker = CircuitBreaker::new(config);
        let mut now = Instant::ZERO;
        // The consecutive-failure rule, modelled independently: a failure to connect adds one,
        // a failure that proves the server answered resets, a connection lost mid-call neither.
        let (mut run, mut run_reached_limit) = (0u32, false);
        for class in &classes {
            now = now + Duration::from_millis(1);
            if matches!(breaker.admit(now), dbguard_core::Admission::Rejected { .. }) {
                continue;
            }
            if breaker.opened_total() == 0 {
                if class.trips_breaker() {
                    run += 1;
                } else if !class.is_connectivity() {
                    run = 0;
                }
                run_reached_limit |= run >= config.consecutive_failures;
            }
            breaker.on_failure(now, *class);
        }
        if classes.iter().all(|c| !c.trips_breaker()) {
            prop_assert_eq!(breaker.opened_total(), 0);
        }
        if run_reached_limit {
            prop_assert!(breaker.opened_total() >= 1, "{} failures to connect in a row left it closed", config.consecutive_failures);
        }
    }

    #[test]
    fn breaker_opens_after_a_run_of_failures_to_connect(
        before in proptest::collection::vec(class(), 0..50),
        run in proptest::collection::vec(tripping_class(), 5..20),
    ) {
        let config = BreakerConfig::default();
        prop_assert_eq!(config.consecutive_failures, 5, "the run's minimum length is written against this");
        let mut breaker = CircuitBreaker::new(config);
        let mut now = Instant::ZERO;
        for class in before.iter().chain(&run) {
            now = now + Duration::from_millis(1);
            if matches!(breaker.admit(now), dbguard_core::Admission::Rejected { .. }) {
                continue;
            }
            breaker.on_failure(now, *class);
        }
        // Every step is 1 ms, far inside the cool-down, so an opened breaker is still open.
        prop_assert!(breaker.opened_total() >= 1);
        prop_assert_eq!(breaker.state(now), BreakerState::Open);
        let refused = matches!(breaker.admit(now), dbguard_core::Admission::Rejected { .. });
        prop_assert!(refused, "an open breaker refuses a new call");
    }
    #[test]
    fn a_settled_breaker_ignores_successes_and_admissions(
        history in proptest::collection::vec((proptest::option::of(class()), 0u64..3_000), 0..120),
    ) {
        // Any history of successes (None) and failures, at steps of up to 3 s (so cool-downs
        // end and probes run), must leave a breaker whose "settled" answer is right: when it
        // says settled, a success or an admission changes nothing at all.
        let config = BreakerConfig::default();
        let mut breaker = CircuitBreaker::new(config);
        let mut now = Instant::ZERO;
        for (outcome, advance) in &history {
            now = now + Duration::from_millis(*advance);
            if matches!(breaker.admit(now), dbguard_core::Admission::Rejected { .. }) {
                continue;
            }
            match outcome {
                Some(class) => breaker.on_failure(now, *class),
                None => breaker.on_success(now),
            }
            if breaker.is_settled() {
                let before = breaker.clone();
                prop_assert_eq!(breaker.admit(now), dbguard_core::Admission::Allowed);
                breaker.on_success(now);
                prop_assert_eq!(&breaker, &before);
            }
        }
        // A breaker that admits calls settles after a full window of successes, and a failure
        // to connect unsettles it.
        now = now + config.cool_down;
        for _ in 0..=config.window {
            if !matches!(breaker.admit(now), dbguard_core::Admission::Rejected { .. }) {
                breaker.on_success(now);
            }
        }
        prop_assert!(breaker.is_settled(), "{:?}", breaker);
        breaker.on_failure(now, ErrorClass::ConnectionRefused);
        prop_assert!(!breaker.is_settled());
    }
}
