# Squall: see README.md. Every target sets up what it needs first.
PY := .venv/bin/python
# make up INVOKERS=3 INVOKER_MEMORY=1024: that many invokers, each with that much user memory (MB).
ifdef INVOKERS
export SQUALL_CONTROLLER_INVOKERS := $(INVOKERS)
endif
ifdef INVOKER_MEMORY
export SQUALL_INVOKER_USER_MEMORY_MB := $(INVOKER_MEMORY)
endif
# make up EDGE_WORKERS=2 CONTROLLERS=2: edge processes sharing the port, controller replicas.
ifdef EDGE_WORKERS
export SQUALL_EDGE_WORKERS := $(EDGE_WORKERS)
endif
ifdef CONTROLLERS
export SQUALL_CONTROLLER_REPLICAS := $(CONTROLLERS)
endif
# make up NETNS=10.231.0.0/24: each invoker in a network namespace of its own on that /24.
ifdef NETNS
export SQUALL_INVOKER_NETNS_SUBNET := $(NETNS)
endif
PROTO_OUT := proto/squall_pb2.py proto/squall_pb2_grpc.py proto/squall_pb2.pyi

.PHONY: setup proto up down status logs test bench ab load clean

setup:
	@scripts/bootstrap.sh

proto: $(PROTO_OUT)

$(PROTO_OUT) &: proto/squall.proto
	@echo "[squall] generating gRPC code from proto/squall.proto"
	@$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. proto/squall.proto

# Set up, start everything, and invoke a sample action.
up: setup
	@$(PY) -m squall.stack up
	@$(PY) -m squall.demo

down:
	@$(PY) -m squall.stack down

status:
	@$(PY) -m squall.stack status

logs:
	@$(PY) -m squall.stack logs $(C)

# Set up, start the stack (if it is not running: two invokers, each in a network namespace of its
# own, and two edge workers) and run every test against it.
test: setup
	@SQUALL_CONTROLLER_INVOKERS=$${SQUALL_CONTROLLER_INVOKERS:-2} SQUALL_EDGE_WORKERS=$${SQUALL_EDGE_WORKERS:-2} \
	 SQUALL_INVOKER_NETNS_SUBNET=$${SQUALL_INVOKER_NETNS_SUBNET-10.231.0.0/24} $(PY) -m squall.stack up
	@scripts/run-tests.sh

bench: setup
	@$(PY) -m squall.stack up
	@$(PY) -m loadtest.bench $(ARGS)

# Same-window A/B of the invoker's code against REV (see loadtest/ab.py): needs two invokers.
ab: setup
	@$(PY) -m loadtest.ab $(REV) $(ARGS)

# Locust, headless, against the running stack: USERS users for DURATION; CSV and a PNG under .squall/load/.
USERS ?= 20
DURATION ?= 60s
load: setup
	@$(PY) -m squall.stack up
	@mkdir -p .squall/load
	@$(PY) -m locust -f loadtest/locustfile.py --headless -u $(USERS) -r 2 -t $(DURATION) \
		--host "$$(grep APIHOST .squall/wskprops | cut -d= -f2)" --csv .squall/load/run --csv-full-history \
		--only-summary || true
	@$(PY) -m loadtest.plot .squall/load/run

clean: down
	rm -rf .squall
