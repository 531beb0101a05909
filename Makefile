# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
BUILD ?= $(CURDIR)/build
REPO := $(BUILD)/testproduct/repo
COMPOSER := $(PYTHON) -m composer
DEMO_MEMORY ?= 512

.PHONY: setup testproduct fedoraproduct oracle rpm pungi pungi-ssh demo demo-iso demo-netboot test unit fuzz bench bench-levers bench-fedora bench-lmc soak docs clean

setup:
	./scripts/setup-host

testproduct: setup
	PYTHONPATH=$(CURDIR)/tools $(PYTHON) -m testproduct $(BUILD)/testproduct

# The Fedora-shaped test product (Debian binaries under Fedora's names and paths, for lorax's
# stock templates) and the real lorax 40.5.19 building and booting its boot.iso. Not part of
# test/demo: see docs/testproduct.md.
fedoraproduct: setup
	PYTHONPATH=$(CURDIR)/tools $(PYTHON) -m testproduct.fedoraproduct $(BUILD)/fedoraproduct

oracle: fedoraproduct
	./scripts/lorax-oracle $(BUILD)/fedoraproduct/repo $(BUILD)/oracle

# composer and composer-lorax as RPMs (packaging/composer.spec) from `git archive HEAD` (what is
# committed) into build/rpm. --nodeps: a Debian host's packages are dpkg's, not in rpm's database.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
rpm:
	rm -rf $(BUILD)/rpm && mkdir -p $(BUILD)/rpm/SOURCES
	git archive --format=tar.gz --prefix=composer-$(VERSION)/ -o $(BUILD)/rpm/SOURCES/composer-$(VERSION).tar.gz HEAD
	rpmbuild -bb --nodeps --define "_topdir $(BUILD)/rpm" --define "_rpmdir $(BUILD)/rpm" packaging/composer.spec
	@ls $(BUILD)/rpm/noarch/*.rpm

# A real Pungi 4.3.2 compose (pungi-koji, ../shared/peers/pungi-4.3.2 in a venv of its own) of the
# Fedora-shaped product with composer as its lorax, then its boot.iso booted (docs/pungi.md).
pungi: fedoraproduct
	PYTHONPATH=$(CURDIR)/src:$(CURDIR)/tools $(PYTHON) tools/pungirun.py $(BUILD) --boot

# The same compose with buildinstall sent over Pungi's openssh runroot to a builder on this
# machine (an sshd on 127.0.0.1 started for the run, an ordinary user with a pip-installed
# composer): composer builds there without root (docs/pungi.md).
pungi-ssh: fedoraproduct
	@test -x /usr/sbin/sshd || (apt-get update -q && apt-get install -y -q --no-install-recommends openssh-server)
	PYTHONPATH=$(CURDIR)/src:$(CURDIR)/tools $(PYTHON) tools/pungirun.py $(BUILD) --ssh --boot

# Compose the test product's runtime as a user would (every default: work dir /var/tmp,
# cache /var/cache/composer, xz, btrfs) and boot it in qemu at 512 MB.
demo: testproduct
	$(COMPOSER) --logfile $(BUILD)/demo.log runtime --product TestProduct --version 1 \
		--source file://$(REPO) --nogpgcheck --force $(BUILD)/demo
	$(COMPOSER) verify --kernel $(BUILD)/demo/images/pxeboot/vmlinuz \
		--initrd $(BUILD)/demo/images/pxeboot/initrd.img --memory $(DEMO_MEMORY) \
		--log $(BUILD)/demo-serial.log
	@echo "demo outputs: $(BUILD)/demo/images/pxeboot/{vmlinuz,initrd.img}, $(BUILD)/demo/images/install.img, $(BUILD)/demo/manifest.json"

# Compose the test product's installer media and boot boot.iso under BIOS and UEFI at 512 MB.
demo-iso: testproduct
	$(COMPOSER) --logfile $(BUILD)/demo-iso.log boot-iso --product TestProduct --version 1 \
		--source file://$(REPO) --nogpgcheck --cachedir $(BUILD)/cache --force $(BUILD)/demo-iso
	$(COMPOSER) verify --iso $(BUILD)/demo-iso/images/boot.iso --firmware bios \
		--memory $(DEMO_MEMORY) --log $(BUILD)/demo-iso-bios-serial.log
	$(COMPOSER) verify --iso $(BUILD)/demo-iso/images/boot.iso --firmware uefi \
		--memory $(DEMO_MEMORY) --log $(BUILD)/demo-iso-uefi-serial.log
	@echo "demo-iso outputs: $(BUILD)/demo-iso/images/boot.iso, install.img, pxeboot/, efiboot.img, .treeinfo, .discinfo"

# Compose the test product's netboot tree (URL: the guest's view of a loopback HTTP
# server) and boot it over qemu's TFTP: iPXE (HTTP) under BIOS, GRUB under UEFI.
NETBOOT_PORT ?= 18480
demo-netboot: testproduct
	$(COMPOSER) --logfile $(BUILD)/demo-netboot.log netboot --product TestProduct --version 1 \
		--source file://$(REPO) --nogpgcheck --cachedir $(BUILD)/cache --force \
		--url http://10.0.2.2:$(NETBOOT_PORT)/ $(BUILD)/demo-netboot
	$(COMPOSER) verify --netboot $(BUILD)/demo-netboot --firmware bios --bootfile boot.ipxe \
		--memory $(DEMO_MEMORY) --log $(BUILD)/demo-netboot-bios-serial.log
	$(COMPOSER) verify --netboot $(BUILD)/demo-netboot --firmware uefi --bootfile grubx64.efi \
		--memory $(DEMO_MEMORY) --log $(BUILD)/demo-netboot-uefi-serial.log
	@echo "demo-netboot tree: $(BUILD)/demo-netboot (pxelinux.0, grubpxe.0, grubx64.efi, boot.ipxe, images/pxeboot/)"

# Unit tests, then the slow integration tests that build and boot real images.
test: testproduct
	$(PYTHON) -m pytest -v --durations=40 -m "not soak" tests

unit: setup
	$(PYTHON) -m pytest -q tests/unit

# The fuzz tests with fresh random examples, ten times as many (CI runs the same ones each time).
fuzz: setup
	COMPOSER_FUZZ_RANDOM=1 COMPOSER_FUZZ_EXAMPLES=10 $(PYTHON) -m pytest -q tests/unit/test_fuzz_inputs.py

# Benchmarks with baselines measured in the same run: composer beside the real lorax 40.5.19
# (peers/lorax-40.5.19/run-lorax) and the current lorax 46.0 (peers/lorax-46.0/run-lorax46), the
# limit, the compressors, and the RAM table of every output kind (qemu boots: the long part).
# BENCH_QUICK=1 skips boot.iso, netboot, the compressors and the boots; BENCH_RUNS=3 repeats the
# compose round (rotating who goes first) and reports the medians. See bench/bench.py.
BENCH_QUICK ?= 0
BENCH_RUNS ?= 1
BENCH_RAM ?= all
LEVERS ?= iso-block,iso-rootfs,big-block,big-rootfs,big-bcj
LEVERS_RAM ?= 1
# No `setup` prerequisite: it pip-installs this checkout; the bench builds the test product itself.
bench:
	BUILD=$(BUILD) BENCH_QUICK=$(BENCH_QUICK) BENCH_RUNS=$(BENCH_RUNS) BENCH_RAM=$(BENCH_RAM) \
		PYTHONPATH=$(CURDIR)/src:$(CURDIR)/tools $(PYTHON) bench/bench.py
	$(MAKE) bench-fedora
	$(MAKE) bench-lmc

# The RAM levers of issue 23 item 3 (bench/levers.py), each beside the default in one run:
# LEVERS=iso-block,iso-rootfs,big-block,big-rootfs,big-bcj selects, LEVERS_RAM=0 skips the floor bisections.
bench-levers:
	BUILD=$(BUILD) LEVERS=$(LEVERS) LEVERS_RAM=$(LEVERS_RAM) PYTHONPATH=$(CURDIR)/src:$(CURDIR)/tools:$(CURDIR)/bench \
		$(PYTHON) bench/levers.py

# The second part alone: the Fedora-shaped product, `composer lorax` against the real lorax with
# lorax's stock templates, the limit and both boot.isos' RAM floors (BENCH_RAM=0: none). bench/fedora.py.
bench-fedora:
	BUILD=$(BUILD) BENCH_RUNS=$(BENCH_RUNS) BENCH_RAM=$(BENCH_RAM) BENCH_QUICK=$(BENCH_QUICK) \
		PYTHONPATH=$(CURDIR)/src:$(CURDIR)/tools $(PYTHON) bench/fedora.py

# The third part alone: the Fedora-shaped product's live spin, `composer livemedia` beside the real
# livemedia-creator 40.5.19 (its --no-virt needs anaconda: it builds --make-pxe-live and --make-iso
# from composer's --make-fsimage of the same kickstart). Its script is taken into build/peers from
# BENCH_LORAX_GIT (a clone of weldr/lorax) when missing; without it the part says why and is skipped.
bench-lmc:
	BUILD=$(BUILD) BENCH_RUNS=$(BENCH_RUNS) PYTHONPATH=$(CURDIR)/src:$(CURDIR)/tools $(PYTHON) bench/lmc.py

# Every rebuild boots: boot.iso rebuilt SOAK_N times (each --no-cache with its own
# SOURCE_DATE_EPOCH), each booted under SeaBIOS and OVMF; prints k/N per firmware.
# Long (a compose and two TCG boots per round) and not part of CI.
SOAK_N ?= 10
SOAK_MEMORY ?= 512
# Then the tests marked soak: long proofs of paths CI proves another way (the Pungi compose,
# the build inside the RPM buildroot, the live ISO under UEFI, the Fedora-shaped product's live spin).
soak: testproduct
	BUILD=$(BUILD) SOAK_N=$(SOAK_N) SOAK_MEMORY=$(SOAK_MEMORY) \
		PYTHONPATH=$(CURDIR)/src:$(CURDIR)/tools $(PYTHON) bench/soak.py
	$(PYTHON) -m pytest -v -m soak tests

# docs/templates.md from the template commands' docstrings (tests/unit/test_docs.py fails when it is stale).
docs:
	PYTHONPATH=$(CURDIR)/src $(PYTHON) tools/gendocs.py

clean:
	rm -rf $(BUILD)/demo $(BUILD)/cache
