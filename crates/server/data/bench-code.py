# Small Python functions that the grounded benchmark workload asks a model to edit and return.
# Written for Turbine's benchmarks; each function is separated by a blank line.

def word_counts(text):
    counts = {}
    for word in text.lower().split():
        word = word.strip(".,;:!?\"'()")
        if word:
            counts[word] = counts.get(word, 0) + 1
    return counts

def moving_average(values, window):
    if window <= 0:
        raise ValueError("window must be positive")
    out = []
    total = 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out

def parse_config(lines):
    config = {}
    section = "default"
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        config.setdefault(section, {})[key.strip()] = value.strip()
    return config

def binary_search(items, target):
    low, high = 0, len(items) - 1
    while low <= high:
        mid = (low + high) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            low = mid + 1
        else:
            high = mid - 1
    return -1

def merge_intervals(intervals):
    result = []
    for start, end in sorted(intervals):
        if result and start <= result[-1][1]:
            result[-1][1] = max(result[-1][1], end)
        else:
            result.append([start, end])
    return result

def format_table(rows, headers):
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(str(cell)))
    line = " | ".join(h.ljust(w) for h, w in zip(headers, widths))
    rule = "-+-".join("-" * w for w in widths)
    body = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join([line, rule] + body)

def retry(call, attempts, delay):
    import time
    last_error = None
    for attempt in range(attempts):
        try:
            return call()
        except Exception as error:
            last_error = error
            time.sleep(delay * (2 ** attempt))
    raise last_error

def invert_index(documents):
    index = {}
    for doc_id, text in documents.items():
        for position, word in enumerate(text.split()):
            index.setdefault(word, []).append((doc_id, position))
    return index

def rolling_max(values, window):
    from collections import deque
    queue = deque()
    out = []
    for i, v in enumerate(values):
        while queue and values[queue[-1]] <= v:
            queue.pop()
        queue.append(i)
        if queue[0] <= i - window:
            queue.popleft()
        out.append(values[queue[0]])
    return out

def slugify(title):
    allowed = "abcdefghijklmnopqrstuvwxyz0123456789"
    slug = []
    for ch in title.lower():
        if ch in allowed:
            slug.append(ch)
        elif slug and slug[-1] != "-":
            slug.append("-")
    return "".join(slug).strip("-")
