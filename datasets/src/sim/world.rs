//! The simulated world: customers with home locations and spending profiles, terminals with
//! locations, merchant category codes and channels, and the foreign cities that travellers and
//! card cloners use.
//!
//! The home region is the Fraud Detection Handbook's 100 x 100 grid, mapped onto about
//! 100 km x 100 km of Belgium so that coordinates and geo-velocity are meaningful. A customer
//! uses the terminals within radius `r` of home, as in the Handbook.

use rand::Rng;
use rand_distr::{Distribution, Uniform};

use super::{rng_for, SimConfig, Stream};

/// Grid size of the home region (Handbook: 100).
pub const GRID: f64 = 100.0;

/// Country of the simulated issuer, customers and home terminals.
pub const HOME_COUNTRY: &str = "BE";

/// A foreign city: where trips go, where foreign merchants and cloned cards are used.
#[derive(Debug, Clone, Copy)]
pub struct City {
    /// ISO 3166-1 alpha-2.
    pub country: &'static str,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Farther than a short flight from the home region (over 1,500 km).
    pub far: bool,
}

/// The foreign cities, near and far.
pub const CITIES: [City; 12] = [
    City {
        country: "FR",
        lat: 48.857,
        lon: 2.352,
        far: false,
    },
    City {
        country: "NL",
        lat: 52.370,
        lon: 4.900,
        far: false,
    },
    City {
        country: "DE",
        lat: 52.520,
        lon: 13.405,
        far: false,
    },
    City {
        country: "GB",
        lat: 51.507,
        lon: -0.128,
        far: false,
    },
    City {
        country: "ES",
        lat: 40.417,
        lon: -3.704,
        far: false,
    },
    City {
        country: "IT",
        lat: 41.903,
        lon: 12.496,
        far: false,
    },
    City {
        country: "US",
        lat: 40.713,
        lon: -74.006,
        far: true,
    },
    City {
        country: "TH",
        lat: 13.756,
        lon: 100.502,
        far: true,
    },
    City {
        country: "BR",
        lat: -23.551,
        lon: -46.633,
        far: true,
    },
    City {
        country: "NG",
        lat: 6.524,
        lon: 3.379,
        far: true,
    },
    City {
        country: "AE",
        lat: 25.205,
        lon: 55.271,
        far: true,
    },
    City {
        country: "CN",
        lat: 31.230,
        lon: 121.474,
        far: true,
    },
];

/// Countries that hold foreign online shops.
const SHOP_COUNTRIES: [&str; 6] = ["FR", "NL", "DE", "IE", "GB", "US"];

/// Terminals in each foreign city.
pub const TERMINALS_PER_CITY: u32 = 20;

/// Merchant category codes of card-present terminals, with weights.
const POS_MCC: [(u16, u32); 10] = [
    (5411, 25), // grocery
    (5812, 12), // restaurants
    (5814, 10), // fast food
    (5541, 10), // fuel
    (5912, 8),  // pharmacy
    (5311, 7),  // department stores
    (5651, 6),  // clothing
    (5732, 4),  // electronics
    (4111, 5),  // transport
    (5999, 13), // other retail
];

/// Merchant category codes of online shops, with weights.
const ECOM_MCC: [(u16, u32); 8] = [
    (5999, 20), // other retail
    (5732, 15), // electronics
    (5815, 15), // digital goods
    (4814, 10), // telecom
    (5942, 10), // books
    (4722, 10), // travel
    (5311, 12), // department stores
    (7995, 8),  // gambling
];

/// Card-present terminal or online shop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A terminal in a shop.
    Pos,
    /// An online shop.
    Ecommerce,
}

/// One terminal.
#[derive(Debug, Clone)]
pub struct Terminal {
    /// Grid x (home terminals).
    pub x: f64,
    /// Grid y.
    pub y: f64,
    /// Latitude (card-present terminals).
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Merchant category code.
    pub mcc: u16,
    /// Channel.
    pub kind: Kind,
    /// ISO country of the merchant.
    pub country: &'static str,
    /// Merchant that owns it.
    pub merchant: u32,
    /// Foreign city (index into [`CITIES`]) for terminals abroad.
    pub city: Option<u8>,
}

/// One customer (one card).
#[derive(Debug, Clone)]
pub struct Customer {
    /// Grid x of home.
    pub x: f64,
    /// Grid y of home.
    pub y: f64,
    /// Mean amount (Handbook: uniform 5..100).
    pub mean_amount: f64,
    /// Standard deviation of amounts (Handbook: mean / 2).
    pub std_amount: f64,
    /// Mean transactions per day (Handbook: uniform 0..4).
    pub tx_per_day: f64,
    /// Home terminals within the radius.
    pub terminals: Vec<u32>,
    /// The card token (`tok_` + 32 hex digits), derived from the seed.
    pub token: String,
}

/// Customers, home terminals and foreign terminals.
#[derive(Debug, Clone)]
pub struct World {
    /// Customers, by id.
    pub customers: Vec<Customer>,
    /// Home terminals first (`0..home_terminals`), then the foreign ones by city.
    pub terminals: Vec<Terminal>,
    /// Number of home terminals.
    pub home_terminals: u32,
    /// Online shops among the home terminals.
    pub ecommerce: Vec<u32>,
}

fn weighted<R: Rng>(rng: &mut R, table: &[(u16, u32)]) -> u16 {
    let total: u32 = table.iter().map(|t| t.1).sum();
    let mut pick = rng.random_range(0..total);
    for &(v, w) in table {
        if pick < w {
            return v;
        }
        pick -= w;
    }
    table[0].0
}

/// Grid coordinates to (latitude, longitude) in the home region.
pub fn to_lat_lon(x: f64, y: f64) -> (f64, f64) {
    (50.40 + y * 0.009, 3.90 + x * 0.014)
}

/// A 128-bit token from the seed and the customer, as `tok_` and 32 hex digits.
fn token(seed: u64, customer: u32) -> String {
    let a = super::mix(seed ^ 0x746f_6b65_6e00_0000, u64::from(customer));
    let b = super::mix(a, 0x5eed);
    format!("tok_{a:016x}{b:016x}")
}

impl World {
    /// Builds the world of `cfg`: the same seed always gives the same world.
    pub fn new(cfg: &SimConfig) -> World {
        let unit = Uniform::new(0.0, GRID).unwrap_or_else(|_| unreachable!("0 < GRID"));
        let mut rng = rng_for(cfg.seed, Stream::Terminals, 0, 0);
        let mut terminals = Vec::with_capacity(cfg.terminals as usize);
        let mut ecommerce = Vec::new();
        for id in 0..cfg.terminals {
            let (x, y) = (unit.sample(&mut rng), unit.sample(&mut rng));
            let online = rng.random::<f64>() < cfg.ecommerce_share;
            let (kind, mcc, country) = if online {
                ecommerce.push(id);
                let foreign = rng.random::<f64>() < cfg.foreign_shop_share;
                let country = if foreign {
                    SHOP_COUNTRIES[rng.random_range(0..SHOP_COUNTRIES.len())]
                } else {
                    HOME_COUNTRY
                };
                (Kind::Ecommerce, weighted(&mut rng, &ECOM_MCC), country)
            } else {
                (Kind::Pos, weighted(&mut rng, &POS_MCC), HOME_COUNTRY)
            };
            let (lat, lon) = to_lat_lon(x, y);
            terminals.push(Terminal {
                x,
                y,
                lat,
                lon,
                mcc,
                kind,
                country,
                merchant: id / 2,
                city: None,
            });
        }
        let home_terminals = cfg.terminals;
        let merchants = home_terminals.div_ceil(2);
        for (c, city) in CITIES.iter().enumerate() {
            for k in 0..TERMINALS_PER_CITY {
                terminals.push(Terminal {
                    x: -1.0,
                    y: -1.0,
                    lat: city.lat + rng.random_range(-0.05..0.05),
                    lon: city.lon + rng.random_range(-0.05..0.05),
                    mcc: weighted(&mut rng, &POS_MCC),
                    kind: Kind::Pos,
                    country: city.country,
                    merchant: merchants + c as u32 * TERMINALS_PER_CITY + k,
                    city: Some(c as u8),
                });
            }
        }
        // Buckets of 1 x 1 grid cells for the radius search.
        let side = GRID as usize;
        let mut buckets: Vec<Vec<u32>> = vec![Vec::new(); side * side];
        for (id, t) in terminals[..home_terminals as usize].iter().enumerate() {
            let (bx, by) = ((t.x as usize).min(side - 1), (t.y as usize).min(side - 1));
            buckets[by * side + bx].push(id as u32);
        }
        let mut rng = rng_for(cfg.seed, Stream::Customers, 0, 0);
        let r = cfg.radius;
        let mut customers = Vec::with_capacity(cfg.customers as usize);
        for id in 0..cfg.customers {
            let (x, y) = (unit.sample(&mut rng), unit.sample(&mut rng));
            let mean_amount = rng.random_range(5.0..100.0);
            let tx_per_day = rng.random_range(0.0..4.0);
            let mut near = Vec::new();
            let lo = |v: f64| ((v - r).floor().max(0.0)) as usize;
            let hi = |v: f64| ((v + r).floor().min(GRID - 1.0)) as usize;
            for by in lo(y)..=hi(y) {
                for bx in lo(x)..=hi(x) {
                    for &t in &buckets[by * side + bx] {
                        let tt = &terminals[t as usize];
                        if (tt.x - x).hypot(tt.y - y) < r {
                            near.push(t);
                        }
                    }
                }
            }
            near.sort_unstable();
            customers.push(Customer {
                x,
                y,
                mean_amount,
                std_amount: mean_amount / 2.0,
                tx_per_day,
                terminals: near,
                token: token(cfg.seed, id),
            });
        }
        World {
            customers,
            terminals,
            home_terminals,
            ecommerce,
        }
    }

    /// Terminals of foreign city `city`.
    pub fn city_terminals(&self, city: usize) -> std::ops::Range<u32> {
        let start = self.home_terminals + city as u32 * TERMINALS_PER_CITY;
        start..start + TERMINALS_PER_CITY
    }
}
