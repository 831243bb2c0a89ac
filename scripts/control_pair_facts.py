"""Curated non-medical facts for the matched control pair sets (read by ``build_control_pairs.py``).

Each family: ``frame`` (the medical pair set's frame string with one word swapped, same token count),
``facts`` (dicts with the frame's fields and ``answer``, the one-token answer with its leading space),
``subject`` (the field that is the item), ``column`` (its column name in the YAML), header texts.
Facts are common knowledge (what the object is for, where a fault sign points); nothing here is medical.
"""

from __future__ import annotations


def _f(frame_field: str, rows: str, group: str | None = None) -> list[dict]:
    out = []
    for line in rows.strip().splitlines():
        s, a = [x.strip() for x in line.split("|")]
        d = {frame_field: s, "answer": " " + a}
        if group:
            d["group"] = group
        out.append(d)
    return out


DEVICES = """
lawnmower | mowing
sextant | navigation
astrolabe | navigation
compass | navigation
telescope | astronomy
theodolite | surveying
metronome | music
synthesizer | music
jukebox | music
chainsaw | logging
jackhammer | demolition
soldering iron | soldering
glue gun | crafts
loom | weaving
potter's wheel | pottery
kiln | pottery
anvil | blacksmithing
espresso machine | coffee
bread maker | baking
toaster | toasting
waffle iron | waffles
deep fryer | frying
barbecue | grilling
air conditioner | cooling
refrigerator | refrigeration
freezer | freezing
space heater | heating
radiator | heating
ceiling fan | ventilation
dishwasher | dishes
washing machine | laundry
tumble dryer | drying
hair dryer | hairstyling
clothes iron | ironing
typewriter | typing
calculator | arithmetic
abacus | arithmetic
slide rule | calculations
photocopier | copying
projector | presentations
microphone | recording
camera | photography
tripod | photography
binoculars | birdwatching
spinning reel | fishing
harpoon | whaling
crossbow | hunting
snowplow | snow
sprinkler | irrigation
wheelbarrow | gardening
hedge trimmer | gardening
rototiller | tilling
plough | farming
tractor | farming
combine harvester | farming
milking machine | dairy
beehive smoker | beekeeping
forklift | warehouses
bulldozer | construction
cement mixer | construction
pile driver | construction
excavator | digging
oxyacetylene torch | welding
lathe | woodworking
bandsaw | woodworking
chisel | carving
modem | internet
satellite dish | television
walkie talkie | communication
telegraph | communication
thermostat | temperature
barometer | weather
anemometer | wind
rain gauge | rainfall
hygrometer | humidity
altimeter | altitude
odometer | mileage
speedometer | speed
pedometer | walking
stopwatch | timing
hourglass | timing
sundial | timekeeping
metal detector | treasure
Geiger counter | radiation
seismograph | earthquakes
fire extinguisher | firefighting
parachute | skydiving
scuba tank | diving
surfboard | surfing
snowboard | snowboarding
ski lift | skiing
oar | rowing
easel | painting
airbrush | painting
corkscrew | wine
teapot | tea
kettle | boiling
blender | smoothies
food processor | chopping
microwave | reheating
oven | baking
cheese grater | cheese
turntable | vinyl
amplifier | amplification
hearing trumpet | listening
sewing machine | tailoring
knitting needle | knitting
crochet hook | crochet
rolling pin | pastry
ice cream maker | dessert
dehumidifier | dampness
humidifier | humidity
water pump | irrigation
windmill | milling
treadmill | running
rowing machine | exercise
stationary bike | cycling
cash register | sales
vending machine | snacks
slot machine | gambling
roulette wheel | gambling
billiard cue | billiards
bowling ball | bowling
golf club | golf
tennis racket | tennis
baseball bat | baseball
hockey stick | hockey
cricket bat | cricket
fishing net | fishing
lasso | roping
saddle | riding
stirrup | riding
bridle | horses
leash | dogs
litter box | cats
aquarium | fish
birdcage | birds
beehive | honey
greenhouse | plants
compost bin | composting
rain barrel | rainwater
solar panel | electricity
wind turbine | electricity
generator | electricity
battery charger | charging
voltmeter | voltage
ammeter | current
multimeter | electronics
oscilloscope | electronics
spectrometer | spectroscopy
centrifuge | separation
Bunsen burner | chemistry
pipette | chemistry
planetarium projector | astronomy
GPS receiver | navigation
radar | navigation
sonar | submarines
periscope | submarines
lighthouse lamp | shipping
foghorn | shipping
anchor | mooring
winch | hauling
pulley | lifting
crane | construction
scaffolding | construction
trowel | bricklaying
spirit level | levelling
tape measure | measuring
plumb bob | surveying
caliper | machining
vise | clamping
sandpaper | sanding
paint roller | decorating
wallpaper steamer | decorating
staple gun | upholstery
nail gun | carpentry
hammer | carpentry
screwdriver | screws
wrench | plumbing
plunger | plumbing
pipe cutter | plumbing
drain snake | plumbing
digital kitchen scale | weighing
handheld metal detector | treasure
portable air conditioner | cooling
petrol lawn mower | mowing
ride-on lawn mower | mowing
garden leaf blower | leaves
electric pressure washer | cleaning
handheld GPS receiver | navigation
digital alarm clock | waking
wind-up alarm clock | waking
electric space heater | heating
manual espresso machine | coffee
upright vacuum cleaner | carpets
front-loading washing machine | laundry
digital SLR camera | photography
instant film camera | photography
electric sewing machine | tailoring
electric guitar amplifier | music
ham radio transceiver | communication
satellite phone | communication
pocket calculator | arithmetic
graphing calculator | mathematics
electric typewriter | typing
overhead projector | presentations
slide projector | presentations
film projector | cinema
digital voice recorder | dictation
studio microphone | recording
noise-cancelling headphones | listening
hot glue gun | crafts
electric chainsaw | logging
portable jump starter | cars
garden hose sprinkler | watering
drip irrigation system | gardening
wood-burning stove | heating
electric blanket | warmth
commercial deep fryer | frying
electric bread maker | baking
electric ice cream maker | dessert
kitchen food processor | chopping
solar water heater | heating
rooftop solar panel | electricity
diesel backup generator | electricity
digital multimeter | electronics
handheld Geiger counter | radiation
weather balloon | forecasting
amateur telescope | astronomy
reflecting telescope | astronomy
marine chronometer | navigation
magnetic compass | navigation
fly fishing rod | trout
compound bow | archery
recurve bow | archery
clay pigeon thrower | shooting
pitching machine | baseball
inflatable kayak | paddling
scuba regulator | diving
wetsuit | surfing
hot air balloon | sightseeing
belt sander | woodworking
belay device | climbing
bobsleigh | racing
camera obscura | drawing
hay baler | farming
ice auger | fishing
paper shredder | documents
planetarium projector | astronomy
plectrum | guitar
spinning jenny | textiles
stenotype machine | transcription
pluviometer | rainfall
pommel horse | gymnastics
teleprompter | broadcasting
zoetrope | animation
harpsichord | music
mandoline slicer | vegetables
glockenspiel | music
enigma machine | encryption
printing press | publishing
cotton gin | textiles
seed drill | sowing
wine press | grapes
cider press | apples
butter churn | dairy
flour mill | grain
gramophone | music
seismometer | earthquakes
speed camera | speeding
angle grinder | metalworking
circular saw | carpentry
crampons | mountaineering
ice axe | mountaineering
carabiner | climbing
camp stove | camping
outboard motor | boating
"""

SIGNS_CAR = """
a puncture | tires
bald treads | tires
a bulging sidewall | tires
uneven tread wear | tires
a slow leak in one wheel | tires
grinding gears | transmission
slipping gears | transmission
delayed shifting | transmission
harsh gear changes | transmission
jumping out of gear | transmission
a spongy pedal | brakes
worn pads | brakes
a grinding noise when stopping | brakes
a long stopping distance | brakes
a pulsing pedal when stopping | brakes
knocking | engine
stalling | engine
misfires | engine
low oil pressure | engine
blue smoke | engine
black smoke | engine
backfiring | exhaust
a noisy muffler | exhaust
a rattling tailpipe | exhaust
fumes in the cabin | exhaust
a loud rumble underneath | exhaust
leaking coolant | radiator
overheating | radiator
steam from the grille | radiator
a bouncy ride | suspension
worn shocks | suspension
a clunk over bumps | suspension
a sagging corner | suspension
a clicking key | battery
corroded terminals | battery
no power at all | battery
a slow crank | battery
dimming lights at idle | alternator
a whining belt | alternator
streaks on the glass | wipers
a cracked windscreen | glass
"""

SIGNS_HOUSE = """
a damp ceiling | roof
missing shingles | roof
a leak in the attic | roof
flickering lights | wiring
tripping breakers | wiring
scorched outlets | wiring
buzzing switches | wiring
low water pressure | plumbing
a dripping tap | plumbing
banging pipes | plumbing
a running toilet | plumbing
cold radiators | boiler
no hot water | boiler
a pilot light that keeps going out | boiler
cracked walls | foundation
sloping floors | foundation
doors that stick in their frames | foundation
smoke in the living room | chimney
soot on the hearth | chimney
draughts | windows
condensation between the panes | windows
water spilling over the edges | gutters
overflowing downpipes | gutters
a smell of sewage | drains
slow draining sinks | drains
gurgling sinks | drains
termites | timber
rising damp | walls
mould in the corners | ventilation
a stuffy attic | ventilation
"""

SIGNS_COMPUTER = """
a flickering display | screen
dead pixels | screen
sticky keys | keyboard
a missing letter key | keyboard
no sound | speakers
crackling audio | speakers
a whirring noise | fan
overheating | fan
a jumpy cursor | mouse
a cursor that will not move | mouse
no internet | router
dropped connections | router
a short battery life | battery
no charge when plugged in | charger
"""

FAMILIES: dict[str, dict] = {
    "drugs": {
        "name": "drug_pairs_control",
        "version": "3.0.0",
        "frame": "The device {object} is used for",
        "subject": "object",
        "column": "object",
        "facts": _f("object", DEVICES),
        "description": """
Control for `drug_pairs`: "The device {object} is used for" (the drug frame with "drug" swapped for
"device", one token on both offline tokenizers) for two everyday or technical objects with different
one-token uses (e.g. sextant -> navigation vs lawnmower -> mowing). The prompts differ only in the object.""",
        "provenance": """
Non-medical control written for medinterp 0.3 (issue 20, matched controls); common knowledge, not from a
clinical source. Built by scripts/build_control_pairs.py: pairs of objects with equal prompt token
length on Gemma 3 and SmolLM2 and different answer tokens, known by Gemma 3 270M (LD_clean > 0 >
LD_corrupted, margin >= 1 logit), chosen so that the item-span token counts follow drug_pairs' on
Gemma's tokenizer. The objects' uses are the common primary use; a reviewer may prefer another word.""",
    },
    "symptoms": {
        "name": "symptom_pairs_control",
        "version": "3.0.0",
        "frame": "A {thing} with {sign} most likely has a problem with the",
        "subject": "sign",
        "column": "sign",
        "extra_columns": ["thing"],
        "same_group": True,
        "facts": ([dict(d, thing="car") for d in _f("sign", SIGNS_CAR, "car")]
                  + [dict(d, thing="house") for d in _f("sign", SIGNS_HOUSE, "house")]
                  + [dict(d, thing="computer") for d in _f("sign", SIGNS_COMPUTER, "computer")]),
        "description": """
Control for `symptom_pairs`: "A {thing} with {sign} most likely has a problem with the" (the symptom
frame with "patient" swapped for car, house or computer, one token each) for two fault signs of the
same thing pointing to different parts (e.g. a car with a spongy pedal -> brakes vs a puncture -> tires).
The prompts differ only in the sign.""",
        "provenance": """
Non-medical control written for medinterp 0.3 (issue 20, matched controls); common knowledge (car,
house and computer faults), not from a clinical source. Built by scripts/build_control_pairs.py: pairs
with equal prompt token length on Gemma 3 and SmolLM2, known by Gemma 3 270M, item-span token counts
following symptom_pairs' on Gemma's tokenizer.""",
    },
}


CITY_CLUES = """
The Eiffel Tower, the Louvre and Notre Dame. | Paris
Crepes near the Eiffel Tower and a boat on the Seine. | Paris
The Arc de Triomphe and the Champs Elysees at night. | Paris
The Colosseum, the Trevi Fountain and the Pantheon. | Rome
Gelato by the Spanish Steps and a tour of the Forum. | Rome
Big Ben, Tower Bridge and Buckingham Palace. | London
A red bus past Big Ben and tea near Trafalgar Square. | London
Gondolas on the Grand Canal and the Rialto Bridge. | Venice
Pigeons in Saint Mark's Square and gondolas on canals. | Venice
The Acropolis, the Parthenon and the Plaka district. | Athens
Shibuya crossing, Shinjuku and the Senso-ji temple. | Tokyo
Red Square, the Kremlin and Saint Basil's Cathedral. | Moscow
The Forbidden City, Tiananmen Square and the Temple of Heaven. | Beijing
The Brandenburg Gate, the Reichstag and Checkpoint Charlie. | Berlin
The Sagrada Familia, Park Guell and La Rambla. | Barcelona
Canals, the Anne Frank House and the Rijksmuseum. | Amsterdam
The pyramids of Giza, the Sphinx and the Nile. | Cairo
Hagia Sophia, the Blue Mosque and the Grand Bazaar. | Istanbul
The Opera House, the Harbour Bridge and Bondi Beach. | Sydney
The Burj Khalifa, the Palm Jumeirah and a desert safari. | Dubai
The Prado, Retiro Park and the Puerta del Sol. | Madrid
Schonbrunn Palace, the State Opera and Sachertorte. | Vienna
The Charles Bridge, the Old Town Square and its astronomical clock. | Prague
The Uffizi, the Ponte Vecchio and the Duomo. | Florence
The Western Wall, the Dome of the Rock and the Old City. | Jerusalem
The Leaning Tower and the Field of Miracles. | Pisa
Trams up the hills, the Belem Tower and custard tarts. | Lisbon
Temple Bar, Trinity College and a pint of Guinness. | Dublin
The Castle on the rock, the Royal Mile and the festival. | Edinburgh
The White House, the Lincoln Memorial and the Capitol. | Washington
Deep dish pizza, the Bean and the Magnificent Mile. | Chicago
The Space Needle, Pike Place Market and rainy days. | Seattle
The CN Tower, Niagara day trips and the Maple Leafs. | Toronto
The Gateway of India, Bollywood studios and Marine Drive. | Mumbai
The Grand Palace, floating markets and tuk tuks on Khao San Road. | Bangkok
Marina Bay Sands, the Merlion and hawker centres. | Singapore
Golden temples, geishas in Gion and bamboo groves. | Kyoto
Christ the Redeemer, Copacabana and Sugarloaf Mountain. | Rio
Vintage cars, cigars and the Malecon seafront. | Havana
The Little Mermaid statue, Tivoli Gardens and Nyhavn. | Copenhagen
The Hollywood sign, Venice Beach and the Walk of Fame. | Los
The Strip, casinos and the Bellagio fountains. | Las
The Louvre pyramid, cafes in Montmartre and the Eiffel Tower. | Paris
A walk from Notre Dame along the Seine to the Eiffel Tower. | Paris
The Sistine Chapel, Saint Peter's Square and the Colosseum. | Rome
Roman ruins, the Trevi Fountain and the Vatican next door. | Rome
The London Eye, Westminster Abbey and the Tower of London. | London
Tower Bridge, Big Ben and a black cab to Piccadilly. | London
Water buses on the Grand Canal and Murano glass. | Venice
Ancient temples, the Parthenon on its hill and the Agora. | Athens
The Imperial Palace, Shinjuku neon and Tokyo Tower. | Tokyo
Sushi at Tsukiji, the Shibuya crossing and Akihabara. | Tokyo
The Kremlin walls, the Bolshoi Theatre and Red Square. | Moscow
The Great Wall day trip, Peking duck and the Forbidden City. | Beijing
The Berlin Wall, the Brandenburg Gate and Museum Island. | Berlin
Gaudi buildings, the Sagrada Familia and the beach at Barceloneta. | Barcelona
Bicycles, canals and the Van Gogh Museum. | Amsterdam
The Giza pyramids, the Egyptian Museum and a felucca on the Nile. | Cairo
The Bosphorus, Topkapi Palace and the Grand Bazaar. | Istanbul
Surfing at Bondi, the Opera House and the Harbour Bridge. | Sydney
The tallest tower in the world, gold souks and the desert. | Dubai
The Royal Palace, the Prado and tapas on the Gran Via. | Madrid
The Hofburg, Schonbrunn Palace and the Vienna State Opera. | Vienna
Prague Castle, the Charles Bridge and the astronomical clock. | Prague
Michelangelo's David, the Duomo and the Ponte Vecchio. | Florence
The Wailing Wall, the Via Dolorosa and the Mount of Olives. | Jerusalem
Yellow trams, Fado music and the Belem Tower. | Lisbon
The Guinness Storehouse, Temple Bar and the River Liffey. | Dublin
The Royal Mile, Arthur's Seat and the Fringe festival. | Edinburgh
The Washington Monument, the White House and the National Mall. | Washington
Wrigley Field, the Willis Tower and deep dish pizza. | Chicago
The Space Needle, the first Starbucks and Mount Rainier views. | Seattle
The CN Tower, Yonge Street and the Blue Jays. | Toronto
The Taj Mahal Palace hotel, the Gateway of India and Bollywood. | Mumbai
The Grand Palace, Wat Pho and the Chao Phraya river. | Bangkok
The Merlion, Gardens by the Bay and Marina Bay Sands. | Singapore
Fushimi Inari gates, Kinkaku-ji and the geisha district. | Kyoto
The statue of Christ the Redeemer, Ipanema and Copacabana. | Rio
Old American cars, salsa bars and the Malecon. | Havana
Tivoli Gardens, Nyhavn harbour and the Little Mermaid. | Copenhagen
Hollywood, Beverly Hills and the Santa Monica pier. | Los
Casinos on the Strip, Elvis chapels and the Bellagio. | Las
Oktoberfest tents, the Hofbrauhaus and the Englischer Garten. | Munich
Mozart's birthplace, the fortress on the hill and Sound of Music tours. | Salzburg
Pizza margherita, Vesuvius on the skyline and day trips to Pompeii. | Naples
The Last Supper fresco, La Scala and the fashion week. | Milan
The Alcazar, the Giralda tower and flamenco in Triana. | Seville
The Alhambra, the Generalife gardens and the Albaicin. | Granada
The Jemaa el-Fnaa square, the souks and the Koutoubia Mosque. | Marrakech
Wawel Castle, the Cloth Hall and the main market square. | Krakow
The Chain Bridge, thermal baths and the Parliament on the Danube. | Budapest
The Vasa Museum, Gamla Stan and the ABBA museum. | Stockholm
The Viking Ship Museum, Vigeland Park and the fjord. | Oslo
The Rock Church, Suomenlinna fortress and Senate Square. | Helsinki
Canals, the Belfry and lace shops in a medieval Flemish town. | Bruges
The Atomium, the Grand Place and the Manneken Pis. | Brussels
The Jet d'Eau, the lake and the United Nations offices. | Geneva
The Freedom Trail, Fenway Park and Harvard across the river. | Boston
The Liberty Bell, Independence Hall and the Rocky steps. | Philadelphia
Country music on Broadway, the Grand Ole Opry and honky tonks. | Nashville
Graceland, Beale Street blues and barbecue ribs. | Memphis
The Old Port, Mount Royal and bagels in French speaking Canada. | Montreal
Stanley Park, Granville Island and mountains by the sea. | Vancouver
The Bund, the Oriental Pearl Tower and Nanjing Road. | Shanghai
Gyeongbokgung Palace, Gangnam and Myeongdong shopping. | Seoul
The Red Fort, India Gate and the lanes of Chandni Chowk. | Delhi
The Taj Mahal at sunrise and the Mughal fort nearby. | Agra
The Hawa Mahal, the Amber Fort and the pink old city. | Jaipur
The Old Quarter, Hoan Kiem Lake and Ho Chi Minh's mausoleum. | Hanoi
Ceviche, the Miraflores cliffs and the capital of Peru. | Lima
Tango dancers, the Casa Rosada and the colourful La Boca. | Buenos
Table Mountain, Robben Island and the V&A Waterfront. | Cape
Dotonbori neon signs, the castle and takoyaki street food. | Osaka
Victoria Peak, the Star Ferry and dim sum in Kowloon. | Hong
Laneway coffee, trams and the Australian Open tennis. | Melbourne
The Golden Gate Bridge, Alcatraz and cable cars. | San
South Beach, art deco hotels and Little Havana. | Miami
Motown records, the car factories and the Pistons. | Detroit
The Beatles, the Cavern Club and the Albert Dock. | Liverpool
Old Trafford, the Etihad stadium and the Northern Quarter. | Manchester
The Bodleian Library, Christ Church and the dreaming spires. | Oxford
King's College chapel, punting on the Cam and the Backs. | Cambridge
Roman baths, the Royal Crescent and Georgian terraces. | Bath
The Kelvingrove museum, the Clyde and Celtic Park. | Glasgow
The Titanic Quarter, the peace walls and the Lagan. | Belfast
Juliet's balcony and the Roman arena in the old town. | Verona
The Palio horse race around the Piazza del Campo. | Siena
Port wine cellars, the Dom Luis bridge and the Ribeira. | Porto
The Old Port, bouillabaisse and Notre-Dame de la Garde. | Marseille
The twin spired cathedral on the Rhine and Kolsch beer. | Cologne
The Reeperbahn, the Elbphilharmonie and the busy port. | Hamburg
The Frauenkirche, the Zwinger palace and the Elbe. | Dresden
The Hallgrimskirkja church, Harpa concert hall and the Blue Lagoon nearby. | Reykjavik
Old city walls on the Adriatic and Game of Thrones sets. | Dubrovnik
Ghats on the Ganges and the evening aarti ceremony. | Varanasi
The Kaaba and the millions on the Hajj pilgrimage. | Mecca
Waikiki Beach, Diamond Head and Pearl Harbor. | Honolulu
Disney World, Universal Studios and theme parks in Florida. | Orlando
The Chateau Frontenac, cobbled streets and the old city walls. | Quebec
The Sky Tower and the harbour of the largest city in New Zealand. | Auckland
The Coca-Cola museum, CNN Center and the Braves. | Atlanta
NASA's mission control, the Rockets and the Astros. | Houston
The Mile High City at the foot of the Rockies. | Denver
The Grand Place, the Atomium and Belgian waffles. | Brussels
Mozart's birthplace, Mirabell Gardens and the Hohensalzburg fortress. | Salzburg
The Ponte Vecchio, the Uffizi and Michelangelo's David. | Florence
Trams along the Yarra river and the Australian Open. | Melbourne
"""

HAZARD_SCALES = [
    # (group, frame text with {value}, [(value, answer), ...]) -- bands from the scale's own definitions
    ("earthquake", "An earthquake with a magnitude of {value} on the Richter scale. It is classed as",
     [("3", "minor"), ("5", "moderate"), ("7", "major")]),
    ("uv", "Sun exposure with a UV index of {value} out of 11. It is classed as",
     [("1", "low"), ("2", "low"), ("4", "moderate"), ("5", "moderate"), ("6", "high"), ("7", "high"),
      ("11", "extreme")]),
    ("tornado", "A tornado with a rating of EF{value} on the Fujita scale. It is classed as",
     [("0", "weak"), ("1", "weak"), ("2", "strong"), ("3", "strong"), ("4", "violent"), ("5", "violent")]),
    ("avalanche", "Avalanche risk at danger level {value} out of 5. It is classed as",
     [("1", "low"), ("2", "moderate"), ("4", "high")]),
    ("aqi", "Air quality with an AQI of {value} today. It is classed as",
     [("20", "good"), ("30", "good"), ("40", "good"), ("75", "moderate"), ("90", "moderate"), ("350", "hazardous"),
      ("400", "hazardous"), ("450", "hazardous")]),
    ("wind", "Wind at force {value} on the Beaufort scale. It is classed as",
     [("1", "light"), ("2", "light"), ("8", "gale"), ("9", "gale")]),
    ("wind_mph", "Wind blowing at {value} miles per hour. It is classed as",
     [("15", "moderate"), ("16", "moderate"), ("42", "gale"), ("44", "gale"), ("58", "storm"), ("60", "storm"),
      ("80", "hurricane"), ("90", "hurricane")]),
    ("aqi2", "Air quality with an AQI of {value} this week. It is classed as",
     [("10", "good"), ("25", "good"), ("45", "good"), ("60", "moderate"), ("80", "moderate"), ("95", "moderate")]),
]

FAMILIES["diseases"] = {
    "name": "diagnosis_pairs_control",
    "version": "3.1.0",
    "frame": "{clue} The most likely city is",
    "subject": "clue",
    "column": "clue",
    "facts": _f("clue", CITY_CLUES),
    "max_use": 3,
    "n_target": 48,
    "match_dist": True,
    "description": """
Control for `diagnosis_pairs`: a short "vignette" of three sights of a city followed by "The most likely
city is" (the diagnosis frame with "diagnosis" swapped for "city", one token on both offline
tokenizers); the answer is the one-token city (e.g. "The Colosseum, the Trevi Fountain and the
Pantheon." -> Rome). Clean and corrupted vignettes differ over their whole length, as the clinical ones do.""",
    "provenance": """
Non-medical control written for medinterp 0.3 (issue 20, matched controls); common knowledge (famous
sights), not from a clinical source. Built by scripts/build_control_pairs.py: pairs with equal prompt
token length on Gemma 3 and SmolLM2, known by Gemma 3 270M, vignette-span token counts following
diagnosis_pairs' on Gemma's tokenizer. "Los" and "Las" are the first tokens of Los Angeles and Las Vegas. 3.1.0 (issue: diseases control not comparable on Gemma 3 270M): 65 less famous sights / smaller cities added; selection matches the medical distribution of intact log p, answer prior, clean LD and prompt length (match_dist), 48 pairs, each fact used at most 3 times.""",
}

FAMILIES["progression"] = {
    "name": "progression_pairs_control",
    "version": "3.0.0",
    "frame": "{text}",
    "subject": "value",
    "column": "value",
    "extra_columns": ["scale"],
    "same_group": True,
    "facts": [{"text": fr.format(value=v), "value": v, "answer": " " + a, "group": g, "scale": g}
              for g, fr, vals in HAZARD_SCALES for v, a in vals],
    "max_use": 4,
    "description": """
Control for `progression_pairs`: a hazard measured on its standard scale, then "It is classed as" (the
progression frame unchanged), differing only in the value; the answer is the scale's own band word
(Richter minor/moderate/major, UV index low/moderate/high/extreme, Enhanced Fujita weak/strong/violent,
avalanche danger low/moderate/high, AQI good/moderate/hazardous, Beaufort light/gale).""",
    "provenance": """
Non-medical control written for medinterp 0.3 (issue 20, matched controls) from the scales' published
bands (Richter magnitude classes; WHO UV index; NWS Enhanced Fujita damage classes; European avalanche
danger scale; US EPA AQI; Beaufort scale); values are well inside each band. Built by
scripts/build_control_pairs.py: pairs with equal token length on Gemma 3 and SmolLM2 and different
answer tokens; unlike the other controls, pairs are not required to be known (progression_pairs is
not known by either offline model).""",
    "require_known": False,
}

FAMILIES["age"] = {
    "name": "age_pairs_control",
    "version": "3.0.0",
    "swap": {"Patient age:": "Customer age:", "The patient is": "The customer is"},
    "description": """
Control for `age_pairs`: the same two frames and the same ages and answers with "patient" swapped for
"customer" (one token on both offline tokenizers): legal status (minor / adult) and age group (child /
adult / elderly) of a customer. Subject tokens, frame, answers and their priors are identical to
age_pairs by construction; only the medical context word differs.""",
    "provenance": """
Non-medical control written for medinterp 0.3 (issue 20, matched controls): age_pairs' rows with the
word swapped (scripts/build_control_pairs.py checks every prompt keeps its token count on Gemma 3 and
SmolLM2). Age of majority 18 (most jurisdictions); age groups as in age_pairs. The earlier control (ages
of trees, young / old) was known by neither offline model and differed in frame and answers.""",
}


def _weights(rows: str) -> list[dict]:
    """``thing | grams`` -> facts with the leading digit as answer and the tenfold foils (like dosage)."""
    out = []
    for line in rows.strip().splitlines():
        thing, g = [x.strip() for x in line.split("|")]
        v = float(g)
        fmt = lambda x: (f"{x:g}" if x >= 1 else f"{x:.3g}") + " g"  # noqa: E731
        out.append({"thing": thing, "answer": f"{g.lstrip('0.')[0]}", "amount": fmt(v), "amount_x10": fmt(v * 10),
                    "amount_div10": fmt(v / 10)})
    return out


# official / regulation weights (midpoint of the rule's range where it gives one), grams
WEIGHTS = """
football | 430
baseball | 145
softball | 190
volleyball | 270
handball | 450
netball | 420
golf ball | 45
tennis ball | 58
cricket ball | 160
table tennis ball | 2.7
squash ball | 24
lacrosse ball | 145
field hockey ball | 160
ice hockey puck | 165
water polo ball | 420
rugby union ball | 435
pickleball | 24
racquetball | 40
bowling pin | 1550
US penny | 2.5
US nickel | 5
US dime | 2.27
US quarter | 5.67
one euro coin | 7.5
two euro coin | 8.5
British pound coin | 8.75
men's shot put | 7260
women's shot put | 4000
men's discus | 2000
women's discus | 1000
men's javelin | 800
women's javelin | 600
men's hammer throw ball | 7260
sheet of A4 office paper | 5
house brick | 3000
US dollar bill | 1
"""

FAMILIES["dosage"] = {
    "name": "dosage_control",
    "version": "3.0.0",
    "frame": "The standard weight of a {thing} is ",
    "subject": "thing",
    "column": "thing",
    "extra_columns": ["amount", "amount_x10", "amount_div10"],
    "facts": _weights(WEIGHTS),
    "max_use": 4,
    "require_known": False,
    "source": "rule book / mint specification",
    "description": """
Control for `dosage`: "The standard weight of a {thing} is " (five tokens before the item, as "The usual
adult dose of" has, and the same " is " ending) for two balls, coins or throwing implements whose
official weights start with different digits; the answer is the leading digit (no leading space, as in
dosage), the whole weight and its tenfold foils are in the amount columns.""",
    "provenance": """
Non-medical control written for medinterp 0.3 (issue 20, matched controls) from the sports' rule books
and the mints' coin specifications (midpoint of a permitted range, in grams); common knowledge, not
from a clinical source. Built by scripts/build_control_pairs.py: pairs with equal token length on Gemma
3 and SmolLM2 and different answer tokens, item-span token counts following dosage's on Gemma's
tokenizer; not required to be known (dosage is not known by either offline model).""",
}
