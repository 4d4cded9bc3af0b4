"""The API's routes, one router per resource. Each route reads what it needs from the request
(`context`), calls a command or a query, and shapes the answer; no route holds logic of its own."""
