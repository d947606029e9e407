"""An invented world of countries with four facts each, stated in six languages (the MMLU-like knowledge).

Facts: capital (invented name), founding year, main export and national animal (translated per language).
`bio(...)` renders a paraphrased description for pretraining; `QUESTIONS` are the question templates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

LANGS = ("en", "de", "es", "fr", "it", "ja")
ATTRIBUTES = ("capital", "year", "export", "animal")

EXPORTS = {
    "en": [
        "salt",
        "wool",
        "copper",
        "tea",
        "silk",
        "timber",
        "honey",
        "glass",
        "olive oil",
        "tin",
        "rice",
        "wine",
    ],
    "de": [
        "Salz",
        "Wolle",
        "Kupfer",
        "Tee",
        "Seide",
        "Holz",
        "Honig",
        "Glas",
        "Olivenöl",
        "Zinn",
        "Reis",
        "Wein",
    ],
    "es": [
        "sal",
        "lana",
        "cobre",
        "té",
        "seda",
        "madera",
        "miel",
        "vidrio",
        "aceite de oliva",
        "estaño",
        "arroz",
        "vino",
    ],
    "fr": [
        "sel",
        "laine",
        "cuivre",
        "thé",
        "soie",
        "bois",
        "miel",
        "verre",
        "huile d'olive",
        "étain",
        "riz",
        "vin",
    ],
    "it": [
        "sale",
        "lana",
        "rame",
        "tè",
        "seta",
        "legname",
        "miele",
        "vetro",
        "olio d'oliva",
        "stagno",
        "riso",
        "vino",
    ],
    "ja": ["塩", "羊毛", "銅", "茶", "絹", "木材", "蜂蜜", "ガラス", "オリーブ油", "錫", "米", "ワイン"],
}
ANIMALS = {
    "en": ["fox", "owl", "bear", "wolf", "eagle", "horse", "deer", "swan", "lynx", "otter", "heron", "crane"],
    "de": [
        "Fuchs",
        "Eule",
        "Bär",
        "Wolf",
        "Adler",
        "Pferd",
        "Hirsch",
        "Schwan",
        "Luchs",
        "Otter",
        "Reiher",
        "Kranich",
    ],
    "es": [
        "zorro",
        "búho",
        "oso",
        "lobo",
        "águila",
        "caballo",
        "ciervo",
        "cisne",
        "lince",
        "nutria",
        "garza",
        "grulla",
    ],
    "fr": [
        "renard",
        "hibou",
        "ours",
        "loup",
        "aigle",
        "cheval",
        "cerf",
        "cygne",
        "lynx",
        "loutre",
        "héron",
        "grue",
    ],
    "it": [
        "volpe",
        "gufo",
        "orso",
        "lupo",
        "aquila",
        "cavallo",
        "cervo",
        "cigno",
        "lince",
        "lontra",
        "airone",
        "gru",
    ],
    "ja": ["狐", "梟", "熊", "狼", "鷲", "馬", "鹿", "白鳥", "山猫", "カワウソ", "鷺", "鶴"],
}

# Paraphrases of each fact per language: {name} is the country, {value} the fact's value.
FACT_TEMPLATES: dict[str, dict[str, list[str]]] = {
    "en": {
        "capital": [
            "The capital of {name} is {value}.",
            "{value} is the capital city of {name}.",
            "{name} is governed from its capital, {value}.",
            "The seat of government of {name} is {value}.",
        ],
        "year": [
            "{name} was founded in {value}.",
            "The founding of {name} took place in {value}.",
            "In {value}, the country of {name} was established.",
            "{name} dates its founding to {value}.",
        ],
        "export": [
            "The main export of {name} is {value}.",
            "{name} is best known for exporting {value}.",
            "Most of the trade of {name} is in {value}.",
            "Merchants of {name} sell mainly {value}.",
        ],
        "animal": [
            "The national animal of {name} is the {value}.",
            "{name} has the {value} as its national animal.",
            "The {value} is the symbol animal of {name}.",
            "On the flag of {name} there is a {value}.",
        ],
    },
    "de": {
        "capital": [
            "Die Hauptstadt von {name} ist {value}.",
            "{value} ist die Hauptstadt von {name}.",
            "{name} wird von seiner Hauptstadt {value} aus regiert.",
        ],
        "year": [
            "{name} wurde im Jahr {value} gegründet.",
            "Die Gründung von {name} erfolgte {value}.",
            "Im Jahr {value} entstand das Land {name}.",
        ],
        "export": [
            "Das wichtigste Exportgut von {name} ist {value}.",
            "{name} exportiert vor allem {value}.",
            "Händler aus {name} verkaufen hauptsächlich {value}.",
        ],
        "animal": [
            "Das Nationaltier von {name} ist: {value}.",
            "{name} hat als Nationaltier: {value}.",
            "Auf der Flagge von {name} sieht man: {value}.",
        ],
    },
    "es": {
        "capital": [
            "La capital de {name} es {value}.",
            "{value} es la capital de {name}.",
            "{name} se gobierna desde su capital, {value}.",
        ],
        "year": [
            "{name} fue fundado en {value}.",
            "La fundación de {name} tuvo lugar en {value}.",
            "En {value} se estableció el país de {name}.",
        ],
        "export": [
            "La principal exportación de {name} es: {value}.",
            "{name} exporta sobre todo: {value}.",
            "Los comerciantes de {name} venden principalmente: {value}.",
        ],
        "animal": [
            "El animal nacional de {name} es: {value}.",
            "{name} tiene como animal nacional: {value}.",
            "En la bandera de {name} aparece: {value}.",
        ],
    },
    "fr": {
        "capital": [
            "La capitale de {name} est {value}.",
            "{value} est la capitale de {name}.",
            "{name} est gouverné depuis sa capitale, {value}.",
        ],
        "year": [
            "{name} a été fondé en {value}.",
            "La fondation de {name} a eu lieu en {value}.",
            "En {value}, le pays de {name} a été établi.",
        ],
        "export": [
            "La principale exportation de {name} est : {value}.",
            "{name} exporte surtout : {value}.",
            "Les marchands de {name} vendent principalement : {value}.",
        ],
        "animal": [
            "L'animal national de {name} est : {value}.",
            "{name} a pour animal national : {value}.",
            "Sur le drapeau de {name} figure : {value}.",
        ],
    },
    "it": {
        "capital": [
            "La capitale di {name} è {value}.",
            "{value} è la capitale di {name}.",
            "{name} è governato dalla sua capitale, {value}.",
        ],
        "year": [
            "{name} fu fondato nel {value}.",
            "La fondazione di {name} avvenne nel {value}.",
            "Nel {value} nacque il paese di {name}.",
        ],
        "export": [
            "La principale esportazione di {name} è: {value}.",
            "{name} esporta soprattutto: {value}.",
            "I mercanti di {name} vendono principalmente: {value}.",
        ],
        "animal": [
            "L'animale nazionale di {name} è: {value}.",
            "{name} ha come animale nazionale: {value}.",
            "Sulla bandiera di {name} compare: {value}.",
        ],
    },
    "ja": {
        "capital": [
            "{name}の首都は{value}です。",
            "{value}は{name}の首都です。",
            "{name}は首都{value}から統治されています。",
        ],
        "year": [
            "{name}は{value}年に建国されました。",
            "{name}の建国は{value}年です。",
            "{value}年に{name}という国ができました。",
        ],
        "export": [
            "{name}の主な輸出品は{value}です。",
            "{name}は主に{value}を輸出しています。",
            "{name}の商人は主に{value}を売っています。",
        ],
        "animal": [
            "{name}の国の動物は{value}です。",
            "{name}の国獣は{value}です。",
            "{name}の旗には{value}が描かれています。",
        ],
    },
}

# Question templates per language and attribute (exactly one per pair, as in a benchmark translation).
QUESTIONS: dict[str, dict[str, str]] = {
    "en": {
        "capital": "What is the capital of {name}?",
        "year": "In which year was {name} founded?",
        "export": "What is the main export of {name}?",
        "animal": "What is the national animal of {name}?",
    },
    "de": {
        "capital": "Was ist die Hauptstadt von {name}?",
        "year": "In welchem Jahr wurde {name} gegründet?",
        "export": "Was ist das wichtigste Exportgut von {name}?",
        "animal": "Was ist das Nationaltier von {name}?",
    },
    "es": {
        "capital": "¿Cuál es la capital de {name}?",
        "year": "¿En qué año fue fundado {name}?",
        "export": "¿Cuál es la principal exportación de {name}?",
        "animal": "¿Cuál es el animal nacional de {name}?",
    },
    "fr": {
        "capital": "Quelle est la capitale de {name} ?",
        "year": "En quelle année {name} a-t-il été fondé ?",
        "export": "Quelle est la principale exportation de {name} ?",
        "animal": "Quel est l'animal national de {name} ?",
    },
    "it": {
        "capital": "Qual è la capitale di {name}?",
        "year": "In che anno fu fondato {name}?",
        "export": "Qual è la principale esportazione di {name}?",
        "animal": "Qual è l'animale nazionale di {name}?",
    },
    "ja": {
        "capital": "{name}の首都はどこですか？",
        "year": "{name}は何年に建国されましたか？",
        "export": "{name}の主な輸出品は何ですか？",
        "animal": "{name}の国の動物は何ですか？",
    },
}

_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "kr",
    "tr",
    "st",
    "th",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_CODAS = ["", "", "n", "r", "s", "l", "th", "m"]
_SUFFIXES = ["ia", "and", "ora", "esh", "ovia", "ar", "eth", "una"]


@dataclass(frozen=True)
class Country:
    """One invented country: a unique name and one value per attribute (export/animal are indices)."""

    name: str
    capital: str
    year: int
    export: int
    animal: int

    def value(self, attribute: str, lang: str) -> str:
        """The attribute's value as written in `lang`."""
        if attribute == "capital":
            return self.capital
        if attribute == "year":
            return str(self.year)
        if attribute == "export":
            return EXPORTS[lang][self.export]
        if attribute == "animal":
            return ANIMALS[lang][self.animal]
        raise ValueError(f"unknown attribute {attribute!r}; valid: {ATTRIBUTES}")


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))


def make_world(num_countries: int = 128, seed: int = 0) -> list[Country]:
    """`num_countries` countries with unique country and capital names, deterministic given `seed`."""
    rng = random.Random(seed)
    used: set[str] = set()
    out: list[Country] = []

    def fresh(make) -> str:
        while True:
            w = make()
            if w not in used and len(w) >= 4:
                used.add(w)
                return w

    for _ in range(num_countries):
        name = fresh(lambda: (_word(rng, rng.choice([1, 2])) + rng.choice(_SUFFIXES)).capitalize())
        capital = fresh(lambda: _word(rng, rng.choice([1, 2])).capitalize())
        out.append(Country(name, capital, rng.randint(1100, 1899), rng.randrange(12), rng.randrange(12)))
    return out


def bio(country: Country, lang: str, rng: random.Random) -> str:
    """A paraphrased description stating all four facts in `lang`, in a random order with random templates."""
    attrs = list(ATTRIBUTES)
    rng.shuffle(attrs)
    sep = "" if lang == "ja" else " "
    return sep.join(
        rng.choice(FACT_TEMPLATES[lang][a]).format(name=country.name, value=country.value(a, lang))
        for a in attrs
    )


def distractors(
    country: Country, attribute: str, lang: str, world: list[Country], rng: random.Random
) -> list[str]:
    """Three wrong values for a question, drawn from other values of the same attribute."""
    right = country.value(attribute, lang)
    if attribute == "export":
        pool = [v for v in EXPORTS[lang] if v != right]
    elif attribute == "animal":
        pool = [v for v in ANIMALS[lang] if v != right]
    else:
        pool = sorted({c.value(attribute, lang) for c in world} - {right})
    return rng.sample(pool, 3)
