"""Ingredients of the benign half of the firewall corpus: what real clients of a bank, a shop and a forum send.

Names with apostrophes, addresses, IBANs, amounts, prose that uses SQL
words in their everyday sense, code posted to a developer forum, search
terms, tracking cookies, base64 documents and JWTs.
"""

from __future__ import annotations

USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 "
    "Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile "
    "Safari/537.36",
    "curl/8.5.0",
    "okhttp/4.12.0",
    "python-requests/2.31.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "PostmanRuntime/7.37.3",
    "Go-http-client/2.0",
    "MyBank/5.12.0 (iPhone; iOS 17.4.1; Scale/3.00)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 "
    "Edg/124.0.2478.67",
    "Apache-HttpClient/4.5.14 (Java/17.0.10)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
]

REFERERS = [
    "https://shop.example.com/",
    "https://shop.example.com/search?q=running+shoes&page=2",
    "https://www.google.com/",
    "https://bank.example.com/accounts/overview",
    "https://forum.example.org/t/how-to-join-two-tables/4412?u=maria",
    "https://news.ycombinator.com/item?id=40112233",
    "https://shop.example.com/product/1234-trail-runner?utm_source=newsletter&utm_medium=email&utm_campaign=spring",
    "https://login.example.com/authorize?client_id=web&response_type=code&redirect_uri=https%3A%2F%2Fapp.example.com"
    "%2Fcallback&scope=openid%20profile",
    "android-app://com.google.android.gm/",
    "https://t.co/xYz12AbC",
]

SEARCH_TERMS = [
    "running shoes",
    "select your account type",
    "drop us a line",
    "union members discount",
    "how to delete my account",
    "update billing address",
    "order by date",
    "where is my order",
    "insert sim card",
    "c++ tutorial",
    "100% cotton t-shirt",
    "AT&T prepaid plans",
    "rock & roll vinyl",
    "don't stop believing lyrics",
    "what's new in python 3.12",
    "5' 11\" height in cm",
    "O'Reilly books",
    "script writing course",
    "alert settings",
    "document scanner app",
    "exec chair",
    "table and chairs",
    "1=1 meaning in sql",
    "cats vs dogs",
    "sleep mask",
    "waitfor",
    "from paris to london",
    "null pointer exception java",
    "password manager",
    "drop-down menu css",
    "echo dot",
    "cat food 5kg",
    "ls 500h lawn mower",
    "ping pong table",
    "union square hotels",
    "system of a down",
    "having trouble logging in",
    "group by month excel",
    "iframe vs embed",
    "json to csv",
    "10 < 20",
    "x >= 3",
    "café crème",
    "naïve bayes",
    "münchen hauptbahnhof",
    "東京 ホテル",
    "sale -50%",
    "mac & cheese recipe",
    "windows 11 update",
    "etc",
    "bash vs zsh",
    "curl command examples",
    "who am i",
    "netflix & chill",
    "then and now",
    "or else",
    "and/or",
    "top 10 'best' laptops",
    '"exact phrase"',
    "prototype pollution explained",
]

NAMES = [
    "Siobhán O'Brien",
    "Patrick O'Neill",
    "D'Arcy Smith",
    "Mary-Jane Watson",
    "José Nuñez",
    "Zoë Müller",
    "Jean-Luc Picard",
    "Anne-Marie D'Souza",
    "Kenji Yamada",
    "Ngozi Okonkwo-Adeyemi",
    "Björn Ångström",
    "Renée L'Heureux",
    "Óscar de la Hoya",
    "Ludwig van Beethoven",
    "Ma'ayan Cohen",
    "Ahmed Al-Farsi",
]

ADDRESSES = [
    ("12 Rue de l'Église", "75002", "Paris", "FR"),
    ("Hauptstraße 5", "10115", "Berlin", "DE"),
    ("1 Infinite Loop", "95014", "Cupertino", "US"),
    ("221B Baker Street", "NW1 6XE", "London", "GB"),
    ("Via dell'Amore 3", "19017", "Riomaggiore", "IT"),
    ("Calle de Alcalá 42, 3º izq.", "28014", "Madrid", "ES"),
    ("Flat 4, 7 O'Connell St", "D01 F5P2", "Dublin", "IE"),
    ("Keizersgracht 123-A", "1015 CJ", "Amsterdam", "NL"),
    ("PO Box 1234", "2000", "Sydney", "AU"),
    ("Ul. Marszałkowska 10/12 m. 5", "00-590", "Warszawa", "PL"),
]

IBANS = [
    ("DE89370400440532013000", "COBADEFFXXX"),
    ("FR1420041010050500013M02606", "PSSTFRPPPAR"),
    ("GB29NWBK60161331926819", "NWBKGB2L"),
    ("NL91ABNA0417164300", "ABNANL2A"),
    ("ES9121000418450200051332", "CAIXESBBXXX"),
    ("IT60X0542811101000000123456", "BPMOIT22XXX"),
    ("IE29AIBK93115212345678", "AIBKIE2D"),
    ("BE68539007547034", "JVBABE22"),
    ("CH9300762011623852957", "POFICHBEXXX"),
    ("PL61109010140000071219812874", "WBKPPLPP"),
]

REMITTANCE = [
    "Invoice 2024-0042",
    "Rent May 2024 - Flat 3",
    "Refund: order #5531 (damaged item)",
    "Dinner at Mario's - split 4 ways",
    "School trip / Year 9 / St. Mary's",
    "Consulting services Q1; PO 7781",
    "Birthday gift for Zoë :)",
    "Payment 1 of 3 - contract A/2024/17",
    "Union dues April",
    "Select Comfort mattress - final payment",
    "Drop-off fee & storage",
    "Membership 'Gold' renewal",
    "50% deposit (balance on delivery)",
    "Tax ref. 123/456/78901",
    "Ref: O'Brien & Sons Ltd",
]

PROSE = [
    "Hi there, I'd like to update the address on my account. I moved last month and haven't received my card yet. "
    "Could you please drop me a line when it's done? Thanks, Siobhán",
    "Great product! I've been using it for 3 months and it's still going strong. The only thing I'd change is the "
    "strap - it's a bit stiff at first. 5/5 would recommend to anyone who's on the fence.",
    "We're a union of independent bookshops and we'd like to select a payment provider for our members. "
    "Where do we start?",
    "Please don't cancel my order, I just need to change the delivery date to Friday (after 2pm if possible).",
    "The meeting is moved from Tuesday to Thursday; please update your calendars and let me know if that doesn't "
    "work. Agenda: 1) budget, 2) hiring, 3) AOB.",
    "I tried to log in 3 times and it said my password was wrong, then it locked me out. I'm sure I typed it right!",
    "Our family has banked with you since 1987 and I've never had a problem until now. Whoever answered the phone "
    "on Monday was rude and hung up on me.",
    "Can I order by phone or do I have to use the website? My mum's not great with computers.",
    "Lovely staff, the room was clean and the view over the harbour was stunning. Breakfast could've been better - "
    "the coffee was lukewarm - but overall we'd definitely stay again.",
    "Re: your question about fees. There's no fee for transfers within the EU/EEA; outside it's 0.5% (min. 2 EUR, "
    "max. 25 EUR). Rates are subject to change.",
    "Is it possible to join two accounts into one? My husband and I want a joint account & we'd like to keep the "
    "older account number.",
    "I'd like to report a lost card. Last used: yesterday at 6:45pm at Tesco Express, Baker St. Please block it.",
    "Shipping was quick (2 days) but the box was damaged; the item itself is fine though. Not sure if I should "
    "return it or not - what do you think?",
    "Drop table tennis from the schedule this week - the gym's being repainted. Back to normal on the 14th.",
    "From: Accounts Payable <ap@example.com>\nTo: you\nSubject: Overdue invoice\n\nDear Sir or Madam,\n"
    "according to our records invoice #4471 is now 30 days overdue. Kindly arrange payment at your earliest "
    "convenience.\n\nKind regards,\nAccounts",
    "Select all that apply: [x] email [ ] SMS [x] post",
    "The cat's out of the bag: we're launching on 1 June! Tell your friends & family - and don't forget the "
    "early-bird code SPRING24 (10% off).",
    "Can someone explain why my balance shows -12.50 when I haven't spent anything? I'm confused...",
    "Where it says 'Account holder', should I put my full legal name or the name on my card?",
    "Script for the video: open on the skyline at dusk, then cut to the team at the whiteboard. Voiceover: "
    "'Banking, but human.'",
    "The user's guide says to hold the button for 5 seconds, then release; the light should blink twice <3",
    "I love JavaScript: it's weird, but it's everywhere.",
    "Alert: your statement for April is ready. Log in to view it.",
    "1 cup flour, 2 eggs, 1/2 cup milk; whisk & rest for 30 min. Cook 2 min per side. Serves 4 (or 2 hungry people).",
    "Tom & Jerry's Ice Cream Parlour - 50% off every Tuesday!",
    "Note to self: pay Sinéad back for the concert tickets (€45 + €4.50 booking fee).",
    'He said, "It\'s not about the money" -- but it clearly was.',
    "Objection: the union's proposal doesn't address overtime; we'll select delegates on Friday.",
]

DEV_POSTS = [
    (
        "How do I read a file line by line in Python?",
        "I have a big log file and I want to process it line by line without loading it all into memory:\n\n"
        "```python\nwith open('server.log', encoding='utf-8') as f:\n    for line in f:\n        if 'ERROR' in line:\n"
        "            print(line.rstrip())\n```\n\nIs this the idiomatic way? It seems to work but I'm not sure about "
        "encoding errors.",
    ),
    (
        "Why does my React state not update?",
        "I call `setCount(count + 1)` twice in a handler but it only increments once:\n\n```jsx\nfunction Counter() {\n"
        "  const [count, setCount] = useState(0);\n  const handleClick = () => {\n    setCount(count + 1);\n"
        "    setCount(count + 1);\n  };\n  return <button onClick={handleClick}>{count}</button>;\n}\n```\n\n"
        "What am I missing?",
    ),
    (
        "Join two tables and keep rows without a match",
        "I have `customers` and `orders`. I want every customer, with their last order date if they have one. "
        "I'm using Postgres 15:\n\n```sql\nSELECT c.id, c.name, max(o.created_at) AS last_order\nFROM customers c\n"
        "LEFT JOIN orders o ON o.customer_id = c.id\nGROUP BY c.id, c.name\nORDER BY last_order DESC NULLS "
        "LAST;\n```\n\n"
        "Is a LEFT JOIN right here or should I use a subquery?",
    ),
    (
        "Bash: loop over files with spaces in their names",
        'This breaks on file names with spaces:\n\n```bash\nfor f in $(ls *.txt); do\n  wc -l "$f"\ndone\n```\n\n'
        "What's the right way? I read that parsing `ls` is bad but I don't understand why.",
    ),
    (
        "Go: how to cancel a goroutine after a timeout?",
        "```go\nctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)\ndefer cancel()\n"
        "select {\ncase res := <-work(ctx):\n    fmt.Println(res)\ncase <-ctx.Done():\n    "
        'fmt.Println("timeout")\n}\n```\n\n'
        "Is `select` with `ctx.Done()` the usual pattern?",
    ),
    (
        "CSS grid: two columns on desktop, one on mobile",
        "```css\n.layout {\n  display: grid;\n  grid-template-columns: 1fr 1fr; /* desktop */\n  gap: 1rem;\n}\n"
        "@media (max-width: 600px) {\n  .layout { grid-template-columns: 1fr; }\n}\n```\n\nThis works but "
        "the gap looks "
        "too big on phones. Any tips?",
    ),
    (
        "Rust borrow checker error with a HashMap",
        "```rust\nlet mut counts: HashMap<String, usize> = HashMap::new();\nfor word in text.split_whitespace() {\n"
        "    *counts.entry(word.to_string()).or_insert(0) += 1;\n}\n```\n\nThis compiles, but when I try to keep a "
        'reference to a value while inserting I get E0502. Why can\'t I hold `&counts["a"]` across the loop?',
    ),
    (
        "Java: parse an ISO date with a time zone",
        "```java\nDateTimeFormatter fmt = DateTimeFormatter.ISO_OFFSET_DATE_TIME;\n"
        'OffsetDateTime t = OffsetDateTime.parse("2024-05-01T12:00:00+02:00", fmt);\n'
        "System.out.println(t.toInstant());\n```\n\nPrints 10:00Z as expected. But how do I handle inputs without an "
        "offset?",
    ),
    (
        "Regex to validate a UK postcode?",
        "I found `^[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}$` but it rejects `GIR 0AA`. Is there a better "
        "one, or should "
        "I just call the postcode API?",
    ),
    (
        "Docker: container can't reach the host",
        "My app in Docker needs the database on the host. `host.docker.internal` works on Mac but not on Linux. "
        "I added `--add-host=host.docker.internal:host-gateway` and now it works - is that the recommended fix?",
    ),
    (
        "What does `git rebase -i HEAD~3` actually do?",
        "It opens an editor with three lines starting with `pick`. If I change the second to `squash`, what happens to "
        "the commit message? And what's the difference between `fixup` and `squash`?",
    ),
    (
        "Python: why is my list comprehension slow?",
        "```python\nresult = [x for x in items if x not in seen]\n```\n\n`seen` is a list with ~100k entries. Someone "
        "said I should use a set. Why does that matter so much?",
    ),
    (
        "TypeScript: narrow a union type",
        "```ts\ntype Shape = { kind: 'circle'; r: number } | { kind: 'square'; side: number };\n"
        "function area(s: Shape): number {\n  switch (s.kind) {\n    case 'circle': return Math.PI * s.r ** 2;\n"
        "    case 'square': return s.side ** 2;\n  }\n}\n```\n\nWhy does TS complain that not all paths "
        "return a value?",
    ),
    (
        "Kotlin coroutines vs threads",
        "If I launch 10,000 coroutines with `repeat(10_000) { launch { delay(1000) } }` it's fine, but 10,000 threads "
        "crash. What's the difference under the hood?",
    ),
    (
        "Excel formula to sum by month",
        "Column A has dates, column B amounts. I use `=SUMPRODUCT((MONTH(A2:A100)=5)*B2:B100)` to get May. Is there "
        "something cleaner, maybe with SUMIFS?",
    ),
    (
        "Nginx: redirect www to non-www",
        "```nginx\nserver {\n    listen 443 ssl;\n    server_name www.example.com;\n"
        "    return 301 https://example.com$request_uri;\n}\n```\n\nDo I need a separate certificate for www?",
    ),
    (
        "How to debounce a search input in vanilla JS",
        "```js\nconst input = document.querySelector('#search');\nlet timer;\ninput.addEventListener('input', () => {\n"
        "  clearTimeout(timer);\n  timer = setTimeout(() => search(input.value), 300);\n});\n```\n\nIs 300ms "
        "a good value?",
    ),
    (
        "Pandas: groupby and count distinct",
        "```python\ndf.groupby('customer_id')['order_id'].nunique().sort_values(ascending=False).head(10)\n```\n\n"
        "This gives me the top 10, but how do I keep the customer name column too?",
    ),
    (
        "C: why does this segfault?",
        '```c\nchar *s = "hello";\ns[0] = \'H\';\nprintf("%s\\n", s);\n```\n\nIt compiles without warnings '
        "but crashes. "
        "Isn't `s` just an array of chars?",
    ),
    (
        "SQL: count users per country",
        "```sql\nSELECT country, COUNT(*) AS users\nFROM accounts\nWHERE closed_at IS NULL\nGROUP BY country\n"
        "HAVING COUNT(*) > 100\nORDER BY users DESC;\n```\n\nWhy do I need HAVING and not WHERE for the count?",
    ),
    (
        "Makefile: run a target only if files changed",
        "```make\nbuild/app: $(wildcard src/*.c)\n\t$(CC) -O2 -o $@ $^\n```\n\nThis rebuilds every time on "
        "CI - is it the "
        "timestamps after checkout?",
    ),
    (
        "YAML anchors in docker-compose",
        "```yaml\nx-common: &common\n  restart: unless-stopped\n  env_file: .env\nservices:\n  api:\n    <<: *common\n"
        "    image: api:latest\n```\n\nIs `<<: *common` standard YAML or a compose thing?",
    ),
]

PRODUCTS = [
    ("sku-10023", "Trail Runner 2 - Men's", 119.99),
    ("sku-10024", "Trail Runner 2 - Women's", 119.99),
    ("sku-20011", "Merino Socks (3-pack)", 24.5),
    ("sku-30400", 'Rain Jacket "Storm" XL', 189.0),
    ("sku-40001", "Kids' Backpack 15L", 39.95),
    ("sku-50550", "Water bottle 750ml / stainless", 19.0),
    ("sku-60606", "Headlamp 400lm + batteries", 44.9),
]

CURRENCIES = ["EUR", "GBP", "USD", "CHF", "PLN", "SEK"]

EMAILS = [
    "siobhan.obrien@example.ie",
    "o'neill.patrick@example.com",
    "jl.picard+bank@example.fr",
    "zoe_mueller@example.de",
    "kenji.yamada@example.jp",
    "first.last@sub.example.co.uk",
]

PASSWORDS = ["correct horse battery staple", "Tr0ub4dor&3", "pa$$w0rd!2024", "S3cure#Pass(2024)", "mÿ-pässwörd-123"]
