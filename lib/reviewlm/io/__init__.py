"""Reading review dumps into the canonical dataset; writing outputs atomically."""
