//! The goals, and the table of met / NOT MET printed at the end.

/// The goals.
pub(crate) const RSS_GOAL_SMALL_MIB: f64 = 48.0;
pub(crate) const RSS_GOAL_LARGE_MIB: f64 = 128.0;
pub(crate) const SYNC_CPU_GOAL_SECS: f64 = 20.0;
pub(crate) const THROUGHPUT_GOAL_RATIO: f64 = 2.0 / 3.0;
pub(crate) const SCRAPE_GOAL_MS: f64 = 250.0;
pub(crate) const SCRAPE_GOAL_SERIES: usize = 100_000;

pub(crate) struct GoalRow {
    pub(crate) goal: String,
    pub(crate) target: String,
    pub(crate) measured: String,
    pub(crate) met: Option<bool>,
}

#[derive(Default)]
pub(crate) struct Goals {
    pub(crate) rows: Vec<GoalRow>,
    /// Correctness of every phase (exported counts = injected ones).
    pub(crate) correct: bool,
}

impl Goals {
    pub(crate) fn add(&mut self, goal: &str, target: &str, measured: String, met: Option<bool>) {
        self.rows.push(GoalRow {
            goal: goal.to_owned(),
            target: target.to_owned(),
            measured,
            met,
        });
    }

    pub(crate) fn print(&self) {
        println!();
        println!("scale: goals");
        println!("| goal | target | measured | verdict |");
        println!("|---|---|---|---|");
        let mut rows: Vec<&GoalRow> = self.rows.iter().collect();
        rows.sort_by_key(|row| row.goal.split('.').next().unwrap_or_default().to_owned());
        for row in rows {
            let verdict = match row.met {
                Some(true) => "met",
                Some(false) => "NOT MET",
                None => "n/a",
            };
            println!(
                "| {} | {} | {} | {} |",
                row.goal, row.target, row.measured, verdict
            );
        }
    }
}
