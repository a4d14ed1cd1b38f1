"""Default word lists, after the reference study (brands, products, wanted/unwanted words)."""

BRANDS = ["nike", "adidas", "puma", "reebok", "asics", "fila", "under armour", "converse",
          "new balance", "vans"]

PRODUCTS = ["shoes", "shoe", "sneakers", "sneaker", "trainers", "trainer", "boots", "sandals",
            "hoodies", "hoodie", "t-shirts", "t-shirt", "shirts", "shirt", "trousers", "pants",
            "shorts", "jackets", "jacket", "socks", "leggings", "athletic wear", "sportswear",
            "running shoes", "joggers"]

WANTED = ["comfortable", "durable", "stylish", "lightweight", "breathable", "supportive",
          "affordable", "soft", "versatile", "reliable", "cozy", "sturdy", "flexible",
          "fashionable", "trendy", "elegant", "light", "cheap", "sleek", "cool", "great",
          "excellent", "amazing", "perfect", "beautiful", "popular", "iconic", "innovative"]

UNWANTED = ["expensive", "ugly", "heavy", "dirty", "uncomfortable", "overpriced", "cheaply",
            "flimsy", "stiff", "tight", "smelly", "fragile", "boring", "outdated", "itchy",
            "bulky", "noisy", "slippery", "bad", "terrible", "awful", "poor", "horrible",
            "useless", "defective", "painful", "worn"]

# Adjectives used by the synthesizer, with the star rating they imply.
NEUTRAL = ["black", "white", "red", "blue", "grey", "standard", "ordinary", "average",
           "typical", "available", "regular", "new"]
