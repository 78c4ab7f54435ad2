//! The game calendar both time-manager (which owns the clock) and weather-manager (whose
//! climate follows the seasons) compute with: days of 24 game hours, four seasons of
//! `days_per_season` days each, spring first. Pure arithmetic; the days per season are
//! time-manager's setting, which it reports with every clock reading.

/// Game seconds per game day.
pub const DAY_SECONDS: i64 = 86_400;
/// Game seconds per game hour.
pub const HOUR_SECONDS: i64 = 3_600;
/// time-manager's default days per season.
pub const DEFAULT_DAYS_PER_SEASON: u32 = 30;

/// The season (1 spring … 4 winter, as the `Season` enums number them) at game second
/// `seconds` with `days_per_season`-day seasons.
pub fn season_at(seconds: i64, days_per_season: u32) -> i32 {
    let dps = i64::from(days_per_season.max(1));
    (seconds.max(0).div_euclid(DAY_SECONDS).div_euclid(dps) % 4) as i32 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seasons_turn_every_days_per_season_days_and_wrap() {
        assert_eq!(season_at(0, 30), 1);
        assert_eq!(season_at(30 * DAY_SECONDS - 1, 30), 1);
        assert_eq!(season_at(30 * DAY_SECONDS, 30), 2);
        assert_eq!(season_at(120 * DAY_SECONDS, 30), 1);
        assert_eq!(season_at(-5, 30), 1);
        assert_eq!(season_at(2 * DAY_SECONDS, 0), 3);
    }
}
