//! Test helpers shared by deskpool's integration tests.

pub mod proxy;
pub mod vcsim;

use rand::SeedableRng;

/// A random generator for a test that kills or faults at random moments: seeded from
/// `DESKPOOL_TEST_SEED` when set, else at random; the seed is printed (with `what`) so a
/// failing run can be repeated.
pub fn seeded_rng(what: &str) -> (u64, rand::rngs::StdRng) {
    let seed: u64 = std::env::var("DESKPOOL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{what} seed {seed} (set DESKPOOL_TEST_SEED={seed} to repeat)");
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

/// The bookkeeping of a crash test's rounds: a seeded generator ([`seeded_rng`]) and how many
/// kills hit a clone in flight.
#[derive(Debug)]
pub struct CrashRounds {
    seed: u64,
    /// The round's random choices (targets, delays) come from here.
    pub rng: rand::rngs::StdRng,
    rounds: usize,
    hits: usize,
}

impl CrashRounds {
    /// Starts counting; prints the seed.
    pub fn new(what: &str) -> Self {
        let (seed, rng) = seeded_rng(what);
        Self {
            seed,
            rng,
            rounds: 0,
            hits: 0,
        }
    }

    /// Waits for the moment to kill: until `sim` reports clones in flight (15 s at most), then
    /// a random 0-100 ms. Counts and prints whether clones are in flight then; the caller
    /// kills right after.
    pub async fn kill_moment(&mut self, sim: &vcsim::Vcsim, note: &str) {
        use rand::Rng;
        sim.clones_in_flight_within(std::time::Duration::from_secs(15))
            .await;
        let delay = self.rng.gen_range(0..100);
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        let in_flight = sim.stats().await.clones_in_flight;
        if in_flight > 0 {
            self.hits += 1;
        }
        println!(
            "round {}: killing with {in_flight} clone(s) in flight ({note})",
            self.rounds
        );
        self.rounds += 1;
    }

    /// Fails the test unless more than half the kills hit a clone in flight.
    pub fn assert_most_hit_work(&self) {
        assert!(
            self.hits * 2 > self.rounds,
            "only {} of {} kills hit a clone in flight (seed {})",
            self.hits,
            self.rounds,
            self.seed
        );
    }
}
