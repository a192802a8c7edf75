"""Vocabulary and templates for `examples.demo_data` (data only, no logic).

Label-bearing sentences never share their giveaway words across labels; everything in
`FILLER`, `TICKET_CONTEXT`, `GREETINGS` and `CLOSINGS` is label-free noise.
"""

from __future__ import annotations

SLOTS: dict[str, tuple[str, ...]] = {
    "product": (
        "headphones", "coffee maker", "backpack", "phone case", "desk lamp", "blender",
        "running shoes", "keyboard", "water bottle", "tent", "vacuum cleaner", "monitor",
        "toaster", "yoga mat", "charger", "jacket", "office chair", "camera", "kettle",
        "mouse", "speaker", "board game", "air fryer", "umbrella", "watch", "sunglasses",
        "printer", "mattress", "frying pan", "hair dryer", "drill", "tablet", "sofa",
        "rice cooker", "smart bulb", "suitcase", "bike helmet", "scarf", "pillow", "router",
    ),
    "color": ("black", "white", "red", "blue", "green", "grey", "pink", "silver", "navy"),
    "relation": ("wife", "husband", "son", "daughter", "mom", "dad", "office", "friend"),
    "weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"),
    "context": ("at work", "at home", "on trips", "in the kitchen", "every morning",
                "on weekends", "in the garage", "for school"),
    "part": ("cable", "lid", "handle", "button", "strap", "battery", "zipper", "screen"),
    "plan": ("premium", "family", "basic", "pro", "annual", "monthly", "business"),
    "feature": ("settings", "the dashboard", "my profile", "the calendar", "search",
                "the camera view", "the inbox", "reports", "the map"),
    "device": ("iPhone", "Android phone", "laptop", "tablet", "smart TV", "Windows PC",
               "Mac", "Chromebook"),
    "browser": ("Chrome", "Firefox", "Safari", "Edge"),
    "country": ("Canada", "Germany", "Japan", "Brazil", "Australia", "Ireland", "Mexico"),
    "month": ("January", "March", "April", "June", "August", "October", "December"),
    "name": ("Anna", "Ben", "Carlos", "Dana", "Eve", "Farid", "Grace", "Hiro", "Ines",
             "Jamal", "Kate", "Liam", "Mia", "Noah", "Olga", "Priya", "Sam", "Tom"),
    "service": (
        "office supplies", "printer paper", "cloud hosting", "catering", "legal advice",
        "consulting hours", "software licenses", "cleaning services", "courier delivery",
        "marketing design", "coffee beans", "laptop repair", "window cleaning", "web design",
        "security audit", "translation", "furniture rental", "fuel", "lab supplies",
    ),
}

REVIEW: dict[str, tuple[str, ...]] = {
    "positive": (
        "I love this {product}.", "Works perfectly, exactly as described.",
        "Best purchase I have made this year.", "Great quality for the price.",
        "Highly recommend it to anyone.", "Five stars, would buy again.",
        "It exceeded my expectations.", "Sturdy, well made and looks great.",
        "My {relation} absolutely loves it.", "Setup took two minutes and it runs flawlessly.",
        "Fantastic {product}, worth every penny.", "Really happy with this one.",
        "Excellent build and super comfortable.", "This {product} is amazing.",
        "Could not be more pleased.", "Brilliant value, I am impressed.",
        "Wonderful design and it works like a charm.", "Totally delighted with it.",
    ),
    "negative": (
        "It broke after two days.", "Complete waste of money.", "Do not buy this {product}.",
        "Stopped working within a week.", "Terrible quality, very disappointed.",
        "I returned it immediately.", "Cheap plastic that cracked right away.",
        "One star. Avoid.", "The worst {product} I have ever owned.",
        "Useless, it never worked properly.", "Awful, the {part} fell off on day one.",
        "I regret buying this.", "Poorly made and overpriced.",
        "Very unhappy, it is already falling apart.", "Horrible smell and flimsy parts.",
        "Save your money and look elsewhere.", "Defective out of the box.",
    ),
    "neutral": (
        "It is okay, nothing special.", "Does the job, nothing more.",
        "Average quality for an average price.", "Some things I like, some I do not.",
        "It works as expected.", "Not great, not terrible.", "Fine for occasional use.",
        "Decent, about what I expected.", "Three stars.", "A pretty ordinary {product}.",
        "I have mixed feelings about it.", "It is fine, I guess.", "Middle of the road.",
        "Neither impressed nor disappointed.", "It is an acceptable {product}, nothing more.",
        "Serviceable but unremarkable.", "Works, though it is nothing to write home about.",
    ),
}

REVIEW_CONTRAST: dict[str, tuple[str, ...]] = {
    "positive": (
        "Shipping was slow, but the {product} itself is fantastic.",
        "The {part} is a bit stiff, but overall I love it.",
        "I was skeptical at first, but it turned out great.",
        "It is a little pricey, but absolutely worth it.",
    ),
    "negative": (
        "It looks nice, but it stopped working after a week.",
        "The color is pretty, but the quality is terrible.",
        "I wanted to like it, but it is a total disappointment.",
        "Fast delivery, but the {product} is junk.",
    ),
    "neutral": (
        "Some parts are good, some are bad.",
        "The {part} is nice, but the rest is just average.",
        "It is cheap, and it feels ordinary.",
        "Delivery was fast; the {product} is just okay.",
    ),
}

FILLER = (
    "I bought it for my {relation}.", "Ordered the {color} one.", "It arrived on {weekday}.",
    "I have been using it for {n} weeks.", "I use it mostly {context}.",
    "This is my second {product}.", "Got it on sale.", "The box was plain cardboard.",
    "I compared a few brands first.", "It came in {color}.", "Bought it {n} months ago.",
)

TICKET: dict[str, tuple[str, ...]] = {
    "billing": (
        "I was charged twice for my {plan} subscription.",
        "My card was billed {amount} but I cancelled last month.",
        "Can I get a refund for the duplicate payment?", "The invoice shows the wrong amount.",
        "Why did my monthly fee go up to {amount}?", "I need a receipt for {month}.",
        "The promo code discount was not applied to my bill.",
        "My payment failed even though the card is valid.",
        "Please stop charging my credit card.", "I was overcharged {amount} on my last bill.",
        "How do I switch my plan to annual billing?", "There is an unknown charge of {amount}.",
    ),
    "technical": (
        "The app crashes every time I open {feature}.",
        "I get error {error} when I try to sync.", "The website will not load on {browser}.",
        "My {device} cannot connect to the server.", "The update broke {feature}.",
        "Notifications stopped working after the latest version.",
        "The export button does nothing.", "Video playback keeps freezing on my {device}.",
        "The page shows a blank screen on {browser}.", "The app is very slow on my {device}.",
        "Uploading files fails with error {error}.", "The sync feature keeps timing out.",
    ),
    "shipping": (
        "My package has not arrived yet, order {order}.",
        "Tracking has shown in transit for {n} days.",
        "The parcel was delivered to the wrong address.",
        "The box arrived crushed and the item is damaged.",
        "Can I change the delivery address for order {order}?",
        "The courier says delivered but nothing is here.", "Do you ship to {country}?",
        "I received someone else's item in my parcel.", "When will order {order} be shipped?",
        "The delivery is {n} days late.", "The tracking number does not work.",
    ),
    "account": (
        "I cannot log in, it says my password is wrong.", "Please reset my password.",
        "How do I change the email on my account?",
        "My account was locked after too many attempts.",
        "I want to delete my account and all my data.",
        "I lost the phone I use for two-factor authentication.",
        "Someone else may have accessed my account.", "How do I update my username?",
        "The login link in the email has expired.", "I need to merge my two accounts.",
        "I never received the verification email.", "Please remove my old profile.",
    ),
}

TICKET_CONTEXT = (
    "I have been a customer for {n} years.", "This is my second message about this.",
    "I am writing from my {device}.", "My name is {name}.", "Order {order} for reference.",
    "This started on {weekday}.",
)
GREETINGS = ("Hi,", "Hello,", "Hello support team,", "Dear support,", "Hey there,", "Urgent:")
CLOSINGS = (
    "Thanks.", "Please help.", "Regards, {name}", "Thank you in advance.",
    "Looking forward to your reply.", "Cheers, {name}", "This is really frustrating.",
)

MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)

VENDOR_HEADS = (
    "Acme", "Northwind", "Globex", "Initech", "Umbrella", "Stark", "Blue Harbor", "Red Oak",
    "Silver Line", "Pioneer", "Summit", "Evergreen", "Brightside", "Cobalt", "Granite",
    "Lakeside", "Maple", "Orion", "Pinnacle", "Quantum", "Riverbend", "Sterling", "Tidewater",
    "Vertex", "Willow", "Zenith", "Falcon", "Apex", "Beacon", "Cedar", "Delta", "Everest",
    "Frontier", "Golden Gate", "Horizon", "Ironwood", "Juniper", "Keystone", "Lumen",
    "Meridian", "Nova", "Oakridge", "Polar", "Redwood", "Sapphire", "Titan", "Unity", "Vista",
    "Hartmann", "Okafor", "Nakamura", "Silva", "Kowalski", "Dubois", "Larsen", "Moreau",
)
# Invented vendor names (two or three syllables): too many to memorise, so the model learns
# to copy the vendor from the text rather than to recall a list of known names.
NAME_SYLLABLES = (
    "ka", "ro", "vin", "tel", "mar", "zo", "bel", "dra", "quin", "lo", "nex", "ta", "sor",
    "vi", "len", "pa", "dor", "gru", "mi", "fen", "ha", "kel", "ox", "ri", "bo", "san",
    "tu", "wen", "ly", "cor", "ap", "zen", "du", "mo", "rak", "ji", "el", "nor", "ve", "st",
)
VENDOR_TRADES = (
    "Office", "Foods", "Tech", "Print", "Logistics", "Paper", "Cloud", "Coffee", "Garden",
    "Auto", "Medical", "Hardware", "Design", "Media", "Energy", "Water", "Travel", "Legal",
    "Cleaning", "Catering", "Consulting", "Software", "Labs", "Textiles",
)
VENDOR_SUFFIXES = (
    "Inc", "Inc.", "LLC", "Ltd", "Ltd.", "GmbH", "Co.", "Corp", "Corporation", "Supplies",
    "Services", "Group", "& Sons", "Partners", "AG", "S.A.", "", "", "",
)

INVOICE_TEMPLATES = (
    "Invoice from {vendor}\nDate: {date}\nTotal: {amount}",
    "INVOICE {num} | {vendor} | issued {date} | amount due {amount}",
    "{vendor} billed us {amount} on {date} for {service}.",
    "Payment request from {vendor}, {date}. Subtotal {subtotal}, tax {tax}, total {amount}.",
    "Hi team, attached is the invoice from {vendor} dated {date}. The total comes to {amount}."
    " Please pay within {days} days.",
    "Receipt\nVendor: {vendor}\nItems: {qty} x {item} @ {unit}\nGrand total: {amount}\n"
    "Date: {date}",
    "On {date} we received invoice {num} from {vendor} totaling {amount}.",
    "Vendor: {vendor}; Invoice date: {date}; Subtotal: {subtotal}; Tax: {tax}; Total due: "
    "{amount}",
    "{date} - {vendor} - {service} - {amount}",
    "Bill {num}\nFrom: {vendor}\nIssued: {date}\n{qty} x {item} at {unit} each\nTotal: {amount}",
    "Please process the payment of {amount} to {vendor} (invoice {num}, dated {date}).",
    "Statement date {date}. Supplier {vendor} requests {amount} for {service}, net {days}.",
)
